"""GPT-1 and GPT-2 in plain PyTorch.

GPT-1 (Radford et al. 2018) normalises after each residual addition (post-LN). GPT-2 (Radford et al.
2019) moves LayerNorm to the input of each sub-block, adds a final LayerNorm and scales the init of
residual projections by 1/sqrt(2 * n_layer). Both use learned positions, GELU, and an output layer
tied to the token embedding. Names follow Hugging Face's GPT2LMHeadModel so weights map one to one.

Parallelism enters only through `Layers`, the classes the model builds its projections, token
embedding and loss from: megagpt.parallel.tensor supplies tensor-parallel ones, and a pipeline
stage (megagpt.parallel.stage_pipeline) reuses Block as it is.

GPT-3 (Brown et al. 2020) keeps GPT-2's model but alternates dense and locally banded attention
layers: a banded layer is LocalCausalSelfAttention, picked per layer by `model.attention`.

For generation a KVCache keeps each layer's keys and values, so that a new token costs one position
of compute instead of the whole prefix.

Weights are initialised inside each layer's constructor rather than by a pass over the finished
model: under `deepspeed.zero.Init` a layer's parameters are partitioned across ranks as soon as
its constructor returns, so a later init pass would only see empty shards. Each layer draws its
weights from a seed of its own (LayerSeeds), so a pipeline stage that builds only its layers gets
the same weights as the whole model, without building the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megagpt.config import ModelConfig
from megagpt.model.attention import banded_attention, banded_mask
from megagpt.model.linear_cross_entropy import linear_cross_entropy

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

INIT_STD = 0.02


@dataclass(frozen=True)
class LayerSeeds:
    """A seed for each layer that draws weights (token and position embeddings, each block), and
    one to reseed with once the model is built: the generators then stand where they would after
    the whole model, whichever part of it a rank built."""

    wte: int
    wpe: int
    blocks: tuple[int, ...]
    after: int

    @classmethod
    def draw(cls, n_layer: int) -> LayerSeeds:
        """Seeds drawn from the global generator (seeded by the caller: train.seed)."""
        s = torch.randint(0, 2**62, (n_layer + 3,), device="cpu").tolist()  # not meta, not zero.Init's device
        return cls(wte=s[0], wpe=s[1], blocks=tuple(s[2:-1]), after=s[-1])


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """build() with the generators seeded by `seed`: the CPU's and the accelerators' alike, as
    deepspeed.zero.Init creates parameters on the device."""
    torch.manual_seed(seed)
    return build()


class Linear(nn.Linear):
    """nn.Linear with weights drawn from N(0, std) and a zero bias, as in both GPT papers."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = INIT_STD,
                 parts: int = 1):
        # parts: the output is that many stacked blocks (q, k, v), which a tensor-parallel split cuts
        # one by one; a whole layer has nothing to do with it.
        self.std = std
        super().__init__(in_features, out_features, bias)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding drawn from N(0, 0.02) instead of N(0, 1)."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=INIT_STD)


def mask_vocab_padding(logits: torch.Tensor, vocab_size: int, start: int = 0) -> torch.Tensor:
    """Set the logits of padding ids (>= vocab_size) to -inf, in place: a few columns written, no
    copy of the logits (the LM head's backward does not need its output). `start` is the first id
    of the slice `logits` holds (tensor parallelism splits the vocabulary)."""
    real = vocab_size - start
    if real < logits.size(-1):
        logits[..., max(real, 0) :] = float("-inf")
    return logits


class LMHead(Linear):
    """The output layer, whose weight is the tied token embedding: logits with the padding ids at
    -inf or, given targets, the mean cross-entropy computed a chunk of rows at a time (the logits
    of all tokens never exist at once). The loss is computed here, in the module that owns the
    weight, so that ZeRO-3 gathers the weight for it."""

    def __init__(self, in_features: int, out_features: int, vocab_size: int):
        super().__init__(in_features, out_features, bias=False)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return mask_vocab_padding(super().forward(x), self.vocab_size)
        return linear_cross_entropy(x, self.weight, targets, self.vocab_size)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)


@dataclass(frozen=True)
class Layers:
    """The classes a GPT is built from. The defaults are whole layers; megagpt.parallel.tensor
    supplies ones split over a tensor-parallel group with the same signatures."""

    column: Callable[..., nn.Module] = Linear  # input whole: QKV, MLP in
    row: Callable[..., nn.Module] = Linear  # output whole: attention out, MLP out
    embedding: Callable[..., nn.Module] = Embedding  # token embedding (shares its weight with the LM head)
    lm_head: Callable[..., nn.Module] = LMHead  # (in, padded vocab, vocab): logits, or the loss of targets
    cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _cross_entropy
    full_logits: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits


class CausalSelfAttention(nn.Module):
    """Dense causal attention: each position attends to every position up to itself."""

    window: int | None = None  # positions a query sees, itself included; None: all before it

    def __init__(self, config: ModelConfig, layers: Layers = Layers()):
        super().__init__()
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_attn = layers.column(config.n_embd, 3 * config.n_embd, bias=config.bias, parts=3)
        self.c_proj = layers.row(
            config.n_embd, config.n_embd, bias=config.bias, std=config.residual_init_std
        )
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # Heads are counted from the projection's width: a tensor-parallel rank holds only some.
        q, k, v = self.c_attn(x).chunk(3, dim=2)
        q, k, v = (t.view(B, T, -1, self.head_size).transpose(1, 2) for t in (q, k, v))
        if kv is None:
            y = self.attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:  # attend to the cached past as well; the cache supplies the causal + padding mask
            k, v, mask = kv.update(k, v, self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


class LocalCausalSelfAttention(CausalSelfAttention):
    """GPT-3's locally banded layer: each position attends to the last `model.local_window`
    positions, itself included (megagpt.model.attention picks the fastest kernel for the device)."""

    def __init__(self, config: ModelConfig, layers: Layers = Layers()):
        super().__init__(config, layers)
        self.window = config.local_window

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        return banded_attention(q, k, v, self.window, dropout_p)


ATTENTION = {"dense": CausalSelfAttention, "local": LocalCausalSelfAttention}  # ModelConfig.layer_attention


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layers: Layers = Layers()):
        super().__init__()
        self.c_fc = layers.column(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # the papers' GELU (HF's "gelu_new")
        self.c_proj = layers.row(
            4 * config.n_embd, config.n_embd, bias=config.bias, std=config.residual_init_std
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layers: Layers = Layers(), attention: str = "dense"):
        super().__init__()
        self.pre_ln = config.arch == "gpt2"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = ATTENTION[attention](config, layers)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, layers)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln_1(x), kv)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, kv))
        return self.ln_2(x + self.mlp(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, layers: Layers, seeds: LayerSeeds):
        super().__init__()
        self.wte = seeded(seeds.wte, lambda: layers.embedding(config.padded_vocab_size, config.n_embd))
        self.wpe = seeded(seeds.wpe, lambda: Embedding(config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([seeded(seed, lambda kind=kind: Block(config, layers, kind))
                                for seed, kind in zip(seeds.blocks, config.layer_attention)])
        # GPT-1 ends on a block's own post-LN; GPT-2 adds a final LayerNorm.
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias) if config.arch == "gpt2" else nn.Identity()
        # Activation checkpointing, a training-time choice (parallel.activation_checkpoint): keep
        # only the input of each chunk of this many blocks and recompute the rest in backward.
        self.checkpoint_blocks = 0

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is None:
            pos = torch.arange(idx.size(1), device=idx.device)
            layers = [None] * len(self.h)
        else:
            pos, layers = cache.positions(idx.size(1)), cache.layers
        x = self.drop(self.wte(idx) + self.wpe(pos))
        if self.checkpoint_blocks and self.training and cache is None:
            return self.ln_f(checkpointed_blocks(list(self.h), x, self.checkpoint_blocks))
        for block, kv in zip(self.h, layers):
            x = block(x, kv)
        if cache is not None:
            cache.advance(idx.size(1))
        return self.ln_f(x)


def checkpointed_blocks(blocks: list[nn.Module], x: torch.Tensor, every: int) -> torch.Tensor:
    """`blocks` applied to x, keeping for backward only the input of each chunk of `every` blocks
    and recomputing the chunk there (the RNG is replayed: dropout recomputes alike)."""
    for start in range(0, len(blocks), every):
        x = checkpoint(run_blocks, blocks[start : start + every], x, use_reentrant=False)
    return x


def run_blocks(blocks: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class KVCache:
    """Keys and values of every layer for the positions seen so far, up to block_size (a banded
    layer keeps only its window: a decoding step there costs the window, not the prefix).

    Rows may be left-padded to a common length: `valid` (B, T0) marks the real tokens of the first
    chunk. Padding is never attended to and positions count real tokens only, so each row computes
    what it would alone.
    """

    def __init__(self, config: ModelConfig, valid: torch.Tensor):
        self.max_len = config.block_size
        self.valid = valid.new_ones(valid.size(0), self.max_len, dtype=torch.bool)
        self.valid[:, : valid.size(1)] = valid
        self.length = 0
        self.layers = [LayerKV(self) for _ in range(config.n_layer)]

    def positions(self, T: int) -> torch.Tensor:
        """(B, T) position ids of the next T tokens: real tokens before them, counted per row."""
        return (self.valid[:, : self.length + T].cumsum(1)[:, self.length :] - 1).clamp(min=0)

    def mask(self, T: int, window: int | None = None) -> torch.Tensor:
        """(B, 1, T, S) attention mask of the next T queries over all S = length + T keys, each
        query seeing the last `window` positions (all of them when None)."""
        S, device = self.length + T, self.valid.device
        seen = banded_mask(T, S, window or S, device) & self.valid[:, None, :S]
        # Each position sees itself: a padding query would otherwise see nothing and give NaN.
        return (seen | banded_mask(T, S, 1, device))[:, None]

    def advance(self, T: int) -> None:
        self.length += T


class LayerKV:
    """One layer's slice of a KVCache, allocated on first use in the dtype the layer computes in
    (a banded layer's holds only the positions its next query can see)."""

    def __init__(self, cache: KVCache):
        self.cache = cache
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(
        self, k: torch.Tensor, v: torch.Tensor, window: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the new (B, H, T, D) keys and values; the keys, values and mask the new queries
        can see: all so far, or for a banded layer only the last `window` positions of each."""
        start, T = self.cache.length, k.size(2)
        if window is not None:  # banded: keep only the window - 1 positions later queries can see
            if self.k is not None:
                k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
            keep = k.size(2) - min(window - 1, k.size(2))
            self.k, self.v = k[:, :, keep:], v[:, :, keep:]
            return k, v, self.cache.mask(T, window)[..., start + T - k.size(2) :]
        if self.k is None:
            shape = (*k.shape[:2], self.cache.max_len, k.size(3))
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        self.k[:, :, start : start + T] = k
        self.v[:, :, start : start + T] = v
        return self.k[:, :, : start + T], self.v[:, :, : start + T], self.cache.mask(T)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, layers: Layers = Layers()):
        super().__init__()
        self.config = config
        self.layers = layers
        seeds = LayerSeeds.draw(config.n_layer)
        self.transformer = Transformer(config, layers, seeds)
        self.lm_head = layers.lm_head(config.n_embd, config.padded_vocab_size, config.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight  # tied input/output embedding
        torch.manual_seed(seeds.after)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab_size) and, given targets (B, T), the mean cross-entropy (-1 is ignored).

        With a `cache`, idx continues the sequences the cache holds and the cache is extended.
        With targets the logits are the training ones: padded_vocab_size wide (padding at -inf) and,
        under tensor parallelism, this rank's slice: gathering them would cost the memory the
        vocabulary-parallel loss saves. With targets and return_logits=False (what the trainer
        asks for) the logits are None and the loss never holds them all (see LMHead)."""
        length = idx.size(1) + (cache.length if cache is not None else 0)
        if length > self.config.block_size:
            raise ValueError(f"sequence length {length} exceeds model.block_size={self.config.block_size}")
        hidden = self.transformer(idx, cache)
        if targets is not None and not return_logits:
            return None, self.lm_head(hidden, targets)
        logits = self.lm_head(hidden)
        if targets is None:
            return self.layers.full_logits(logits)[..., : self.config.vocab_size], None
        return logits, self.layers.cross_entropy(logits, targets)

    def num_parameters(self) -> int:
        """Parameters counted once each (the tied embedding once), as Hugging Face counts them."""
        return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.parameters())

    # --- Hugging Face interop (transformers is needed only here) -----------------------------

    # HF's GPT-2 stores these as Conv1D (in, out); nn.Linear keeps (out, in).
    _HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf(cls, hf_model: GPT2LMHeadModel) -> GPT:
        c = hf_model.config
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation {c.activation_function!r}; GPT-2 uses gelu_new")
        config = ModelConfig(
            arch="gpt2", n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
            vocab_size=c.vocab_size, block_size=c.n_positions, dropout=c.resid_pdrop,
        )
        model = cls(config)
        state = _from_hf_state(hf_model.state_dict(), cls._HF_TRANSPOSED)
        wte = state["transformer.wte.weight"]
        padding = wte.new_zeros(config.padded_vocab_size - config.vocab_size, wte.size(1))
        state["transformer.wte.weight"] = state["lm_head.weight"] = torch.cat([wte, padding])
        model.load_state_dict(state)
        return model

    def to_hf(self, eos_token_id: int | None = None) -> GPT2LMHeadModel:
        """This model as a GPT2LMHeadModel; eos_token_id is the tokenizer's end of text (GPT-2's
        50256 otherwise), which generation stops at."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        if c.arch != "gpt2":
            raise ValueError("to_hf exports arch=gpt2 models; GPT-1 has no GPT2LMHeadModel layout")
        if "local" in c.layer_attention:
            raise ValueError(
                f"to_hf exports dense-attention models; this one has model.attention={c.attention!r} "
                f"with locally banded layers (local_window={c.local_window}), which GPT2LMHeadModel "
                "cannot express (its every layer is dense). megagpt's own generate, evaluate and "
                "finetune take the checkpoint as it is"
            )
        hf = GPT2LMHeadModel(GPT2Config(
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
            n_positions=c.block_size, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
            attn_pdrop=c.dropout, activation_function="gelu_new", layer_norm_epsilon=1e-5,
            **({} if eos_token_id is None else {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id}),
        ))
        state = {
            k: v.t() if k.endswith(self._HF_TRANSPOSED) else v for k, v in self.state_dict().items()
        }
        for key in ("transformer.wte.weight", "lm_head.weight"):  # HF has no padding rows
            state[key] = state[key][: c.vocab_size]
        missing, unexpected = hf.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(".attn.bias") and not k.endswith("masked_bias") for k in missing):
            raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
        return hf


def _from_hf_state(state: dict[str, torch.Tensor], transposed: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old HF versions
            continue
        out[key] = value.t() if key.endswith(transposed) else value
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])
    return out
