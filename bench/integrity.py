"""What do the integrity checks cost against reading a shard and saving or loading a checkpoint?

    python -m bench.integrity [--tokens 20000000] [--params 25000000] [--repeat 3] [--json PATH]

Shard: one webdataset shard of --tokens uint16 tokens in 1,000-token documents, read the way
megagpt.training.data reads it (read_shard: parse the tar, load every document), without and with
the manifest's sha256 (which reads the file into memory, hashes it, then parses from memory); also
the sha256 of the bytes alone and the out-of-vocabulary check (the largest id). Checkpoint: a
state of --params fp32 weights plus Adam's two moments, as a checkpoint (12 bytes a parameter)
holds them, saved with torch.save then hashed (checkpoint.integrity.write_checksums, xxh3-128),
verified (checkpoint.integrity.verify) and loaded (torch.load).
All files are in the page cache, which is the case at save (just written) and the worst case for
the relative cost of the hash (no disk to wait for). The best of --repeat runs is kept (shard
reads with and without the check alternate).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import harness
from megagpt.checkpoint import integrity
from megagpt.formats.shards import ShardWriter, read_shard


def best(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def shard_costs(folder: Path, tokens: int, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    with ShardWriter(folder, vocab_size=50257, max_shard_tokens=tokens) as writer:
        for i in range(tokens // 1000):
            writer.write(f"doc{i:07d}", rng.integers(0, 50257, 1000, dtype=np.uint16), {"source": "bench"})
    shard = writer.shards[0]
    path = folder / shard["name"]

    def read(sha256=None):
        return sum(len(t) for _, t, _ in read_shard(path, sha256))

    # Alternated, so that load from other processes on the machine falls on both alike.
    plain, checked = zip(*[(best(1, read), best(1, lambda: read(shard["sha256"]))) for _ in range(repeat)])
    plain, checked = min(plain), min(checked)
    data = path.read_bytes()
    hash_alone = best(repeat, lambda: hashlib.sha256(data).hexdigest())
    docs = [t for _, t, _ in read_shard(path)]
    vocab = best(repeat, lambda: max(int(d.max()) for d in docs))  # megagpt.training.data's id range check
    return {"shard_mb": len(data) / 1e6, "read_s": plain, "read_and_verify_s": checked,
            "sha256_alone_s": hash_alone, "vocab_check_s": vocab, "overhead": checked / plain - 1}


def checkpoint_costs(folder: Path, params: int, repeat: int) -> dict[str, float]:
    state = {"states": {f"w{i}": {k: torch.randn(params // 10) for k in ("param", "exp_avg", "exp_avg_sq")}
                        for i in range(10)}}
    path = folder / "step00000001"
    (path / "portable").mkdir(parents=True)
    file = path / "portable" / "stage00.pt"
    save = best(repeat, lambda: torch.save(state, file))
    hash_ = best(repeat, lambda: integrity.write_checksums(path))
    verify = best(repeat, lambda: integrity.verify(path))
    load = best(repeat, lambda: torch.load(file, weights_only=True))
    return {"checkpoint_mb": file.stat().st_size / 1e6, "save_s": save, "checksums_s": hash_,
            "verify_s": verify, "load_s": load, "save_overhead": hash_ / save, "load_overhead": verify / load}


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds the shard's and the checkpoint's seconds."""
    shard, ckpt = figures["shard"], figures["checkpoint"]
    rows = [("shard: read vs sha256 alone", shard["shard_mb"], shard["read_s"], shard["sha256_alone_s"]),
            ("shard: read vs read + sha256 - read", shard["shard_mb"], shard["read_s"],
             shard["read_and_verify_s"] - shard["read_s"]),
            ("shard: read vs token id range check", shard["shard_mb"], shard["read_s"],
             shard["vocab_check_s"]),
            ("checkpoint: torch.save vs xxh3 checksums", ckpt["checkpoint_mb"], ckpt["save_s"],
             ckpt["checksums_s"]),
            ("checkpoint: torch.load vs xxh3 verify", ckpt["checkpoint_mb"], ckpt["load_s"],
             ckpt["verify_s"])]
    table = harness.Table(["what", "MB", "I/O s", "check s", "overhead"])
    for name, mb, io, check in rows:
        table.add(name, round(mb), round(io, 3), round(check, 3), f"{check / io:+.1%}")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="reading the shard; torch.save and torch.load of the checkpoint (files in the page cache)")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--tokens", type=int, default=20_000_000)
    p.add_argument("--params", type=int, default=25_000_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shard = shard_costs(Path(tmp) / "shards", args.tokens, args.repeat)
        ckpt = checkpoint_costs(Path(tmp) / "ckpt", args.params, args.repeat)
    settings = {"tokens": args.tokens, "params": args.params, "repeat": args.repeat}
    harness.report("integrity", summarize(settings, {"shard": shard, "checkpoint": ckpt}), args.json)


if __name__ == "__main__":
    main()
