"""The model: GPT-1 and GPT-2 (and GPT-3's banded attention) in plain torch, readable alone.

`gpt` is the network (nanoGPT's shape: embeddings, Blocks, final LayerNorm, tied LM head),
`attention` the attention patterns chosen by config, `linear_cross_entropy` the chunked LM-head
loss. Parallelism enters only through the `Layers` bundle that megagpt.parallel.tensor fills. May
import: megagpt.config. Nothing else of megagpt.
"""
