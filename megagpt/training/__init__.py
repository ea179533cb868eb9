"""The training engine: everything between the model and the loop in megagpt/train.py.

`engine` joins the process group and builds the DeepSpeed engine for a layout,
`deepspeed_config` fills ds_config.json from the run config, `offload` sizes ZeRO-Offload /
ZeRO-Infinity, `preflight` checks before any compute what a run will need, `data` streams and packs
token shards for each rank, `metrics` writes metrics.jsonl and TensorBoard, `preemption` turns
SIGTERM/SIGUSR1 into a checkpoint and exit 75. May import: megagpt.config, model, parallel,
sizing, formats, checkpoint.
"""
