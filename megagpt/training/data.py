"""Streaming token shards into training batches, with a position that can be saved and restored.

Each epoch reads the shard folder as one token stream: shards in a seeded order, documents inside
a shard in a seeded order, each document ending in the end-of-text token. The stream is cut into
windows of block_size + 1 tokens with stride block_size (inputs and shifted targets; no token is
only ever a target). A window's place in the stream depends only on (seed, epoch, index), so the
position of a run is two integers, and it resumes in O(one shard) using the manifest's per-shard
token counts instead of replaying the data.

Every data-parallel rank walks the same window stream and keeps its own slice of each global
micro-batch. The global batch is therefore the same for any number of ranks, which is what lets
each parallel layout be compared with a single process. Reading is cheap next to compute (a
1.5B-parameter step consumes about 2 bytes of shard per 18 GFLOP), so the repeated reads cost
nothing that matters.

A mixture (MixtureDataset) interleaves several shard folders by weight, as GPT-3 sampled its
high-quality sets more often than their size: each window of the mixture is drawn from corpus s
with probability weight_s by a generator seeded with (seed, epoch), and each corpus keeps its own
cursor that runs on through its own epochs. The position is still the one window counter:
the cursors follow from counting the draws before it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from megagpt.config import mixture_weights
from megagpt.formats.shards import MANIFEST_NAME, ShardError, read_manifest, read_shard
from megagpt.formats.tokenizer import Tokenizer

log = logging.getLogger("megagpt.training.data")


@dataclass
class DataState:
    """Where a run is in its data: the epoch, and windows of it already consumed by all ranks."""

    epoch: int = 0
    window: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ShardDataset:
    """A shard folder (see megagpt/formats/shards.py) seen as a deterministic stream of token windows."""

    def __init__(self, folder: str | Path, block_size: int, seed: int):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.block_size = block_size
        self.seed = seed
        self.shards = self.manifest["shards"]
        self.total_tokens = sum(s["tokens"] for s in self.shards)
        tokenizer = self.manifest["tokenizer"]
        self.tokenizer_sha256: str = tokenizer["sha256"]
        self.tokenizer_path = self.folder / tokenizer["file"]
        self.vocab_size: int = tokenizer["vocab_size"]
        unchecked = [s["name"] for s in self.shards if "sha256" not in s]
        if unchecked:
            log.warning("%s lists no sha256 for %d shard(s) (built before shards had checksums): they "
                        "are read unverified; rebuild the folder to have them checked",
                        self.folder / MANIFEST_NAME, len(unchecked))

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer file beside the shards, refused unless it is the one they were built with."""
        tokenizer = Tokenizer.load(self.tokenizer_path)
        if tokenizer.sha256 != self.tokenizer_sha256:
            raise ShardError(
                f"{self.tokenizer_path} is not the tokenizer {self.folder / MANIFEST_NAME} was built with "
                f"(sha256 {tokenizer.sha256[:12]}..., the manifest says {self.tokenizer_sha256[:12]}...): "
                "put the build's tokenizer back, or rebuild the shards with this one"
            )
        return tokenizer

    @property
    def windows_per_epoch(self) -> int:
        return max(0, (self.total_tokens - 1) // self.block_size)

    def iter_windows(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """Windows start, start+1, ... of `epoch`, each block_size + 1 tokens long."""
        T = self.block_size
        want = start * T  # stream offset of the first token wanted
        pos = 0  # stream offset of buf[0]
        buf = np.empty(0, dtype=np.int64)
        for i in self._shard_order(epoch):
            n = self.shards[i]["tokens"]
            if pos + len(buf) + n <= want:  # the whole shard lies before the resume point
                pos += n
                continue
            buf = np.concatenate([buf, self._shard_stream(i, epoch)])
            if pos < want:
                buf, pos = buf[want - pos :], want
            while len(buf) >= T + 1:
                yield buf[: T + 1]
                buf, pos = buf[T:], pos + T

    def _shard_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def _shard_stream(self, index: int, epoch: int) -> np.ndarray:
        shard = self.shards[index]
        path = self.folder / shard["name"]
        docs = [tokens for _, tokens, _ in read_shard(path, shard.get("sha256"))]
        count = sum(len(d) for d in docs)
        if count != shard["tokens"]:
            raise ShardError(
                f"{path} holds {count} tokens but {self.folder / MANIFEST_NAME} says "
                f"{shard['tokens']}; the folder is inconsistent: rebuild it"
            )
        # An id past the vocabulary would index past the embedding, far from here and unnamed.
        top = max((int(d.max()) for d in docs if len(d)), default=-1)
        if top >= self.vocab_size:
            raise ShardError(
                f"{path} holds token id {top}, outside the vocabulary of {self.vocab_size} of "
                f"{self.tokenizer_path}: the shard is damaged or from another tokenizer; rebuild the folder"
            )
        order = np.random.default_rng([self.seed, epoch, index]).permutation(len(docs))
        return np.concatenate([docs[j] for j in order]).astype(np.int64) if docs else np.empty(0, np.int64)


class MixtureDataset:
    """Several shard folders with the same tokenizer, seen as one stream of windows mixed by weight.

    An epoch of the mixture is as many windows as all its corpora hold together; a corpus with a
    large weight is read several times within it, one with a small weight partly.
    """

    def __init__(self, datasets: Sequence[ShardDataset], weights: Sequence[float], seed: int):
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("a mixture needs one weight for each of at least one corpus")
        if not all(0 < w < math.inf for w in weights):
            raise ValueError(f"mixture weights {list(weights)} must all be positive")
        first = datasets[0]
        for d in datasets:
            if d.tokenizer_sha256 != first.tokenizer_sha256:
                raise ValueError(f"{d.folder} and {first.folder} were tokenized with different tokenizers; "
                                 "build every corpus of a mixture with the same --tokenizer")
            if d.windows_per_epoch == 0:
                raise ValueError(f"{d.folder} holds fewer than {d.block_size + 1} tokens: nothing to mix in")
        self.datasets, self.seed = list(datasets), seed
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.folder = Path(", ".join(str(d.folder) for d in datasets))
        self.block_size = first.block_size
        self.total_tokens = sum(d.total_tokens for d in datasets)
        self.tokenizer_sha256, self.tokenizer_path = first.tokenizer_sha256, first.tokenizer_path
        self.vocab_size = first.vocab_size

    @property
    def windows_per_epoch(self) -> int:
        return sum(d.windows_per_epoch for d in self.datasets)

    def load_tokenizer(self) -> Tokenizer:
        return self.datasets[0].load_tokenizer()  # all were built with it (checked above)

    def choices(self, epoch: int) -> np.ndarray:
        """Which corpus each window of `epoch` comes from."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        return rng.choice(len(self.datasets), size=self.windows_per_epoch, p=self.weights)

    @lru_cache(maxsize=4)  # noqa: B019 (a few epochs' counts; the dataset lives as long as the run)
    def _cursors(self, epoch: int) -> tuple[int, ...]:
        """Windows of each corpus consumed by all epochs before `epoch`."""
        if epoch == 0:
            return (0,) * len(self.datasets)
        before = np.bincount(self.choices(epoch - 1), minlength=len(self.datasets))
        return tuple(int(c) for c in np.add(self._cursors(epoch - 1), before))

    def iter_windows(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        choices = self.choices(epoch)
        counts = np.bincount(choices[:start], minlength=len(self.datasets))
        cursors = np.add(self._cursors(epoch), counts)
        streams = [_endless(d, int(c)) for d, c in zip(self.datasets, cursors)]
        for source in choices[start:]:
            yield next(streams[source])


def _endless(dataset: ShardDataset, window: int) -> Iterator[np.ndarray]:
    """The windows of `dataset` from its `window`-th on, running on through its epochs."""
    epoch, start = divmod(window, dataset.windows_per_epoch)
    for e in itertools.count(epoch):
        yield from dataset.iter_windows(e, start if e == epoch else 0)


def open_dataset(path: str | Path, mixture: Sequence[str], block_size: int, seed: int
                 ) -> ShardDataset | MixtureDataset:
    """`path` alone, or the mixture of FOLDER=WEIGHT entries when `mixture` names any."""
    if not mixture:
        return ShardDataset(path, block_size, seed)
    pairs = mixture_weights(list(mixture))
    folders = [ShardDataset(folder, block_size, seed) for folder, _ in pairs]
    return MixtureDataset(folders, [weight for _, weight in pairs], seed)


class RankBatches:
    """This rank's micro-batches (inputs, targets) of each global micro-batch, resumable.

    A global micro-batch is micro_batch * dp_size consecutive windows; rank r takes the r-th
    micro_batch of them. A global micro-batch never straddles two epochs: the tail of an epoch
    too short for a whole one is skipped.
    """

    def __init__(self, dataset: ShardDataset | MixtureDataset, micro_batch: int, dp_rank: int, dp_size: int,
                 state: DataState | None = None):
        self.dataset = dataset
        self.micro_batch = micro_batch
        self.dp_rank = dp_rank
        self.group = micro_batch * dp_size
        if dataset.windows_per_epoch < self.group:
            raise ValueError(
                f"{dataset.folder} holds {dataset.total_tokens} tokens, fewer than one global "
                f"micro-batch of {self.group} windows x {dataset.block_size + 1} tokens; build a "
                "bigger corpus or lower train.micro_batch_size / model.block_size"
            )
        self.state = DataState() if state is None else DataState(**asdict(state))
        self._windows: Iterator[np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset.windows_per_epoch // self.group

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.state.window + self.group > self.dataset.windows_per_epoch:
            self.state = DataState(epoch=self.state.epoch + 1, window=0)
            self._windows = None
        if self._windows is None:
            self._windows = self.dataset.iter_windows(self.state.epoch, self.state.window)
        group = [next(self._windows) for _ in range(self.group)]
        self.state.window += self.group
        mine = np.stack(group[self.dp_rank * self.micro_batch : (self.dp_rank + 1) * self.micro_batch])
        batch = torch.from_numpy(mine)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
