"""Megatron-style tensor parallelism: the layers a GPT is built from, split over a tp group.

A column-parallel linear keeps its input whole and splits its output features (QKV, MLP in, LM
head); a row-parallel linear takes split input features and sums the partial outputs (attention
out, MLP out). Between the two nothing is communicated, so a block costs one all-reduce forward
and one backward per sub-block. The token embedding is split over the vocabulary, and the loss is
computed from vocabulary-split logits without ever gathering them.

Every layer draws its full weight from the global generator, exactly as the single-process layer
does, and keeps its slice: the assembled model equals the one-process model for the same seed, and
the generator ends in the same state. (The full matrix exists briefly while a layer is built.)
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megagpt.model.gpt import INIT_STD, Layers, mask_vocab_padding


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient backward (the input fed every tp rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward (sum the partial results); identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Feed `x` to a column-parallel layer: every rank uses all of it, so its gradients are summed."""
    return _CopyToTP.apply(x, group)


def _split(full: torch.Tensor, dim: int, group: dist.ProcessGroup, parts: int = 1) -> nn.Parameter:
    """This rank's share of `full` along `dim`: of each of `parts` equal blocks, the rank-th piece.

    Marked `tensor_model_parallel` so that DeepSpeed's gradient norm sums it over the tp group
    (parameters without the mark are replicated there and counted once), and with its split so
    that checkpoints can reassemble it (gather_split / take_split)."""
    param = nn.Parameter(take_split(full, (dim, parts), group))
    param.tensor_model_parallel = True
    param.tp_split = (dim, parts)
    return param


def take_split(full: torch.Tensor, split: tuple[int, int], group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's piece of a whole tensor split as `split` = (dim, parts) over `group`."""
    dim, parts = split
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    return torch.cat([b.chunk(size, dim=dim)[rank] for b in full.chunk(parts, dim=dim)], dim=dim).clone()


def gather_split(piece: torch.Tensor, split: tuple[int, int], group: dist.ProcessGroup) -> torch.Tensor:
    """The whole tensor from every rank's piece (the inverse of take_split); collective over `group`."""
    dim, parts = split
    pieces = [torch.empty_like(piece) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, piece.contiguous(), group=group)
    blocks = zip(*(p.chunk(parts, dim=dim) for p in pieces))  # per part, its piece from every rank
    return torch.cat([torch.cat(block, dim=dim) for block in blocks], dim=dim)


def vocab_slice_start(vocab: int, group: dist.ProcessGroup) -> int:
    """The first id of this rank's rows of a (vocab, ...) weight split evenly over `group`."""
    return dist.get_rank(group) * (vocab // dist.get_world_size(group))


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local, W split over output features. `parts` > 1 splits each of
    that many stacked outputs separately (QKV: each rank gets its heads' q, k and v)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = INIT_STD,
                 parts: int = 1, *, group: dist.ProcessGroup):
        super().__init__()
        self.group = group
        self.weight = _split(torch.empty(out_features, in_features).normal_(0.0, std), 0, group, parts)
        self.bias = _split(torch.zeros(out_features), 0, group, parts) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.group), self.weight, self.bias)


class VocabParallelLMHead(ColumnParallelLinear):
    """The output layer split over the vocabulary (its weight is the tied VocabParallelEmbedding's):
    this rank's logits, padding at -inf, or given targets the vocabulary-parallel loss."""

    def __init__(self, in_features: int, out_features: int, vocab_size: int, *, group: dist.ProcessGroup):
        super().__init__(in_features, out_features, bias=False, group=group)
        self.vocab_size = vocab_size
        self.start = vocab_slice_start(out_features, group)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = mask_vocab_padding(super().forward(x), self.vocab_size, self.start)
        return logits if targets is None else vocab_parallel_cross_entropy(logits, targets, group=self.group)


class RowParallelLinear(nn.Module):
    """y = sum over tp ranks of x_local W_local^T, plus the (replicated) bias once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = INIT_STD,
                 *, group: dist.ProcessGroup):
        super().__init__()
        self.group = group
        self.weight = _split(torch.empty(out_features, in_features).normal_(0.0, std), 1, group)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReduceFromTP.apply(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the token embedding; other ids look up zeros, summed over the tp group."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, group: dist.ProcessGroup):
        super().__init__()
        self.group = group
        self.weight = _split(torch.empty(num_embeddings, embedding_dim).normal_(0.0, INIT_STD), 0, group)
        self.start = vocab_slice_start(num_embeddings, group)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        local = idx - self.start
        outside = (local < 0) | (local >= self.weight.size(0))
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return _ReduceFromTP.apply(x.masked_fill(outside.unsqueeze(-1), 0.0), self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy of vocabulary-split logits: three all-reduces of (B*T) numbers, not the logits."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, group: dist.ProcessGroup):
        logits = logits.float()
        vocab_local = logits.size(-1)
        start = dist.get_rank(group) * vocab_local
        logits_max = logits.max(dim=-1).values
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max.unsqueeze(-1)
        local = targets - start
        mine = (local >= 0) & (local < vocab_local)
        local = local.masked_fill(~mine, 0)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        dist.all_reduce(target_logit, group=group)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        valid = targets != -1
        loss = (sum_exp.log() - target_logit).masked_fill(~valid, 0.0)
        count = valid.sum().clamp(min=1)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local, mine & valid, valid, count)
        return loss.sum() / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, local, target_here, valid, count = ctx.saved_tensors
        g = softmax
        g.scatter_add_(-1, local.unsqueeze(-1), -target_here.unsqueeze(-1).to(g.dtype))
        g.mul_(valid.unsqueeze(-1) * (grad / count))
        return g, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *,
                                 group: dist.ProcessGroup) -> torch.Tensor:
    """Mean cross-entropy over targets != -1 of logits (..., vocab / tp) split over `group`."""
    flat = logits.reshape(-1, logits.size(-1))
    return _VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), group)


def _gather_vocab(logits: torch.Tensor, *, group: dist.ProcessGroup) -> torch.Tensor:
    """Whole-vocabulary logits (for sampling and returned logits; training never needs them)."""
    pieces = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, logits.contiguous(), group=group)
    return torch.cat(pieces, dim=-1)


def tensor_parallel_layers(group: dist.ProcessGroup) -> Layers:
    """The layer set of a GPT split over `group` (Megatron's column/row split, vocab-parallel ends)."""
    return Layers(
        column=partial(ColumnParallelLinear, group=group),
        row=partial(RowParallelLinear, group=group),
        embedding=partial(VocabParallelEmbedding, group=group),
        lm_head=partial(VocabParallelLMHead, group=group),
        cross_entropy=partial(vocab_parallel_cross_entropy, group=group),
        full_logits=partial(_gather_vocab, group=group),
    )
