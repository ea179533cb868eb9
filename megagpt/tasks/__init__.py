"""What a trained model is used for: `evaluate` (GPT-2 zero-shot and GPT-3 few-shot tasks),
`finetune` (GPT-1's task input transforms and auxiliary LM loss), `generate` (sampling with a KV
cache). The commands `python -m megagpt.{evaluate,finetune,generate}` call into these.

May import: megagpt.config, model, formats, checkpoint, training (fine-tuning builds an engine).
"""
