"""Sizing on paper: parameter counts and model-state bytes (`parameters`), FLOPs per token
(`flops`) and the layout planner (`planner`, the code behind `python -m megagpt.plan`).

Pure arithmetic on a ModelConfig: no torch, no process groups. May import: megagpt.config.
"""
