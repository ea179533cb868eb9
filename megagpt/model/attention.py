"""Locally banded causal attention (GPT-3's sparse layers): each query sees the last `window` keys.

The band is a small part of the causal triangle once the context is several windows long, and
the kernels here compute only the blocks it touches. Which one runs is decided by the device:

- an accelerator (GPU): FlexAttention (`torch.nn.attention.flex_attention`, compiled) with a block
  mask of the band; it skips the blocks outside the band and never stores the scores. It has no
  attention dropout, so training with dropout uses the blocked kernel there too.
- the CPU: `blocked_banded_attention`, one SDPA call over blocks of `window` queries, each against
  its own and the previous block of keys (all a band of that width can reach): 2 * window scores a
  query instead of T. bench/sparse_attention.py measures it against dense attention (window 256:
  0.79x dense's speed at context 1024, where the blocks cost as many scores as the causal
  triangle, 1.20x at 2048, 2.57x at 4096) and against one SDPA call with a full banded mask
  (slower than dense at every length). FlexAttention compiles for the CPU but has no backward there
  (torch 2.13: "FlexAttention does not support backward on CPU"), so it cannot train.

All of them equal dense attention under an explicit banded causal mask (tests/test_attention.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """(B, H, T, D) attention of each position over the last `window` positions, itself included."""
    if window >= q.size(-2):  # the band holds the whole context: this is dense causal attention
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if q.device.type != "cpu" and dropout_p == 0.0:
        return flex_banded_attention(q, k, v, window)
    return blocked_banded_attention(q, k, v, window, dropout_p)


def banded_mask(queries: int, keys: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(queries, keys) boolean mask of the band, the last `queries` positions of `keys` as queries."""
    query = torch.arange(keys - queries, keys, device=device)[:, None]
    key = torch.arange(keys, device=device)[None, :]
    return (key <= query) & (key > query - window)


def blocked_banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                             dropout_p: float = 0.0) -> torch.Tensor:
    """The band computed a block of `window` queries at a time against 2 * window keys."""
    B, H, T, D = q.shape
    n = -(-T // window)
    end = n * window - T  # the last block is padded; padded queries are dropped, padded keys unseen

    def padded(x: torch.Tensor, front: int) -> torch.Tensor:
        return F.pad(x, (0, 0, front, end)).reshape(B * H, -1, D)

    # Key blocks i-1 and i for query block i, as a strided view (no copy): keys are padded with one
    # block in front, whose positions the mask leaves out.
    k, v = (padded(x, window).unfold(1, 2 * window, window).transpose(-1, -2) for x in (k, v))
    q = padded(q, 0).view(B * H, n, window, D)
    mask = _block_band_mask(n, window, q.device)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(B, H, n * window, D)[:, :, :T]


def _block_band_mask(n: int, window: int, device: torch.device) -> torch.Tensor:
    """(1, n, window, 2 * window): query r of block i sees key s of blocks (i-1, i) when their
    distance window + r - s is in [0, window) and the key is not the padding before block 0."""
    r = torch.arange(window, device=device)[:, None]
    s = torch.arange(2 * window, device=device)[None, :]
    band = (s > r) & (s <= r + window)
    first = torch.arange(n, device=device)[:, None, None] > 0
    return (band & (first | (s >= window)))[None]


def flex_banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """FlexAttention with a block mask of the band (compiled on first use, then per shape)."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _flex_band_block_mask(q.size(-2), window, q.device)
    return _compiled(flex_attention)(q, k, v, block_mask=block_mask)


@functools.cache
def _compiled(fn):  # compiled once per process: recompiling per call is what FlexAttention warns of
    return torch.compile(fn)


@functools.lru_cache(maxsize=16)  # a training run uses one or two sequence lengths
def _flex_band_block_mask(T: int, window: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return create_block_mask(band, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
