"""The GPT as a DeepSpeed PipelineModule: the same blocks, cut into stages.

Layers in order: token embedding (tied with the LM head on the last stage through TiedLayerSpec),
positions, the transformer blocks, the final LayerNorm (GPT-2), the LM head; the loss is the
(vocabulary-parallel, under tp) cross-entropy. Stages are balanced by parameter count.

A stage builds only its own layers, so it cannot draw its initial weights from where the global
generator would be had the layers before it been built. Each layer spec therefore carries the
generator state the one-process model reaches at that layer (computed by building the model one
layer at a time on the CPU and dropping each), and every layout starts from the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import ProcessTopology

from megagpt.config import ModelConfig
from megagpt.model import Block, Embedding, Layers, mask_vocab_padding
from megagpt.parallel.tensor import copy_to_tp


class Positions(nn.Module):
    """Adds the learned position embedding (and embedding dropout) to the token embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wpe = Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x + self.wpe(torch.arange(x.size(1), device=x.device)))


def _lm_head(tp_group: dist.ProcessGroup | None, vocab_size: int, embedding: nn.Module,
             x: torch.Tensor) -> torch.Tensor:
    if tp_group is not None:  # the column-parallel head: whole input, this rank's vocabulary slice out
        x = copy_to_tp(x, tp_group)
    return mask_vocab_padding(F.linear(x, embedding.weight), vocab_size, getattr(embedding, "start", 0))


class _Seeded:
    """Builds its layer from a saved generator state, the one-process model's at that layer."""

    def __init__(self, rng_state: torch.Tensor, *args, **kwargs):
        self.rng_state = rng_state
        super().__init__(*args, **kwargs)

    def build(self, log: bool = False) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            return super().build(log)


class SeededLayerSpec(_Seeded, LayerSpec):
    pass


class SeededTiedLayerSpec(_Seeded, TiedLayerSpec):
    pass


def _class_and_kwargs(factory: Callable[..., nn.Module]) -> tuple[type, dict]:
    if isinstance(factory, partial):
        return factory.func, dict(factory.keywords)
    return factory, {}


def _one_process_rng_states(config: ModelConfig) -> list[torch.Tensor]:
    """Generator states before wte, wpe and each block, as GPT(config) would draw them."""
    states = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for build in [partial(Embedding, config.padded_vocab_size, config.n_embd),
                      partial(Embedding, config.block_size, config.n_embd),
                      *[partial(Block, config, attention=kind) for kind in config.layer_attention]]:
            states.append(torch.get_rng_state())
            build()
    return states


def pipeline_gpt(config: ModelConfig, layers: Layers, topology: ProcessTopology,
                 tp_group: dist.ProcessGroup | None, activation_checkpoint: int) -> PipelineGPT:
    """GPT(config, layers) as pipeline stages over `topology`; tp_group is None without tp."""
    rng = _one_process_rng_states(config)
    # LayerSpec wants a class: a tensor-parallel layer set binds its group with functools.partial.
    wte, wte_kwargs = _class_and_kwargs(layers.embedding)
    specs: list[LayerSpec | Callable] = [
        SeededTiedLayerSpec(rng[0], "wte", wte, config.padded_vocab_size, config.n_embd, **wte_kwargs),
        SeededLayerSpec(rng[1], Positions, config),
        *[SeededLayerSpec(state, Block, config, layers, kind)
          for state, kind in zip(rng[2:], config.layer_attention)],
    ]
    if config.arch == "gpt2":
        specs.append(LayerSpec(nn.LayerNorm, config.n_embd, bias=config.bias))
    specs.append(SeededTiedLayerSpec(rng[0], "wte", wte, config.padded_vocab_size, config.n_embd,
                                     **wte_kwargs, forward_fn=partial(_lm_head, tp_group, config.vocab_size)))
    return PipelineGPT(
        config, specs, topology=topology, loss_fn=layers.cross_entropy, partition_method="parameters",
        activation_checkpoint_interval=activation_checkpoint,
        # Only blocks: DeepSpeed's reentrant checkpoint gives no gradient to a chunk whose input
        # (the token ids of the first stage) needs none, so the embedding must stay outside.
        checkpointable_layers=["Block"],
    )


class PipelineGPT(PipelineModule):
    """A PipelineModule that knows the one-process names of its parameters (for checkpoints)."""

    def __init__(self, config: ModelConfig, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config

    def serial_name(self, name: str) -> str:
        """'3.attn.c_attn.weight' -> 'transformer.h.1.attn.c_attn.weight' (layer 0 is the tied
        token embedding, 1 the positions, then the blocks and the final LayerNorm)."""
        head, _, rest = name.partition(".")
        if head == "tied_modules":
            return "transformer.wte." + rest.partition(".")[2]
        index = int(head)
        if index == 1:
            return "transformer." + rest
        if index < 2 + self.config.n_layer:
            return f"transformer.h.{index - 2}.{rest}"
        return "transformer.ln_f." + rest

