"""The tokenizer steps of a corpus build: the sample of train documents (those with the smallest
seeded hashes, found by bisection over the ranks so that no rank holds more than the sample's
hashes), and the tokenizer trained on it on rank 0, or the one given.

Training runs in a child process (multiprocessing's spawn: a fresh interpreter, nothing of the
build's memory copied) that reads the sample files itself: sentencepiece keeps the sample and its
statistics, several times the sample's text, until its process ends, and in the build's own
process that stayed resident for the rest of the build (599 MiB on a build that otherwise needs
about 50). The sample is bounded by --tokenizer-sample documents, so the child's memory is too,
whatever the corpus's size.

A part of pipelines.build's `_Build`: it uses the build's settings, work area, chunks and ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zstandard

from megagpt.formats.tokenizer import Tokenizer
from pipelines.build_settings import TOKENIZER_FILE, TRAIN
from pipelines.mpi import settle

log = logging.getLogger("pipelines.build")


def sample_hash(digest: bytes, seed: int) -> int:
    """Orders train documents for the tokenizer sample: the sample is the smallest ones."""
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, key=f"sample{seed}".encode()).digest())


class TokenizerSteps:
    """The sample and tokenizer steps of a build."""

    def make_tokenizer(self) -> None:
        """The given tokenizer, or one trained on rank 0 on a sample of train documents."""
        path = self.area.work / TOKENIZER_FILE
        if not path.is_file() and self.s.tokenizer is None:
            self.sample_threshold = self._sample_threshold()
            self._run("sample", range(len(self.chunks)), self._sample_chunk)
        error = None
        if self.rank == 0 and not path.is_file():
            try:
                self._write_tokenizer(path)
            except ValueError as err:
                error = str(err)
        settle(self.comm)  # rank 0 may train for minutes
        error = self.comm.bcast(error, root=0)
        if error:
            raise ValueError(error)
        self.tokenizer = Tokenizer.load(path)

    def _write_tokenizer(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        if self.s.tokenizer is not None:
            shutil.copyfile(self.s.tokenizer, tmp)
        else:
            samples = [self.area.file("sample", c.id, "texts.zst") for c in self.chunks]
            documents = sum(self.area.record("sample", c.id)["documents"] for c in self.chunks)
            log.info("training a %d-piece BPE tokenizer on %d documents", self.s.vocab_size, documents)
            try:
                with multiprocessing.get_context("spawn").Pool(1) as child:
                    child.apply(train_tokenizer, (samples, tmp, self.s.vocab_size, self.s.seed))
            except RuntimeError as err:  # sentencepiece: "Vocabulary size too high (N) ..."
                tmp.unlink(missing_ok=True)
                raise ValueError(f"--vocab-size {self.s.vocab_size} cannot be trained on {documents} "
                                 f"documents ({err}); lower --vocab-size or give more text") from None
        os.replace(tmp, path)

    def _sample_threshold(self) -> int:
        """The tokenizer_sample-th smallest sample hash of all train documents: found by bisection
        over the ranks' own smallest hashes, so no rank holds more than tokenizer_sample of them."""
        k = self.s.tokenizer_sample
        smallest = np.empty(0, np.uint64)
        train = 0
        for c in self.chunks[self.rank :: self.size]:
            decided = np.load(self.area.file("decide", c.id, "fate.npz"))
            mine = decided["sample"][decided["fate"] == TRAIN]
            smallest, train = np.sort(np.concatenate([smallest, mine]))[:k], train + len(mine)
        low, high = 0, (1 << 64) - 1
        # all train documents, not the ranks' smallest (at most k each: on one rank never more than k)
        if self.comm.allreduce(train) <= k:
            return high
        while low < high:  # the least threshold that k hashes are at or below
            middle = (low + high) // 2
            if self.comm.allreduce(int(np.searchsorted(smallest, np.uint64(middle), side="right"))) >= k:
                high = middle
            else:
                low = middle + 1
        return low

    def _sample_chunk(self, unit: int) -> None:
        decided = np.load(self.area.file("decide", unit, "fate.npz"))
        chosen = (decided["fate"] == TRAIN) & (decided["sample"] <= np.uint64(self.sample_threshold))
        with zstandard.open(self.area.file("sample", unit, "texts.zst"), "wt", encoding="utf-8") as out:
            for text in (d["text"] for d, take in zip(self._texts(unit), chosen) if take):
                out.write(json.dumps(text, ensure_ascii=False) + "\n")
        self.area.finish("sample", unit, {"documents": int(chosen.sum())})


def train_tokenizer(samples: list[Path], model: Path, vocab_size: int, seed: int) -> None:
    """Train a tokenizer on the texts of the sample files, in this process (the build's child)."""
    Tokenizer.train(_sample_texts(samples), model, vocab_size, seed=seed)


def _sample_texts(samples: list[Path]) -> Iterator[str]:
    for path in samples:
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f)
