"""How do the overlap checker's filter-building memory and speed grow as the training text grows 4x?

    python -m bench.overlap_scale [--words 3000000] [--json bench/results/overlap_scale-DATE.json]

Training text: the sentences of LAMBADA (test) and WikiText-2 (test), shuffled with a seeded RNG
into new documents of 30 sentences, with one word in five replaced by a random word of their
vocabulary so that each copy of a sentence brings new 8-grams, as a larger corpus would; ~1x
(--words) and ~4x as many words, written to a temporary folder as jsonl files of 2,000 documents
(pipelines.sources reads one input file whole, so files are kept shard-sized). Nothing generated
is kept.

Each measurement is a fresh child process (python -m bench.overlap_scale --child, under mpiexec
for 2 ranks) reporting its own peak RSS
(getrusage maxrss), so one run's peak never hides another's:
  base         imports, a small batch hashed and inserted: the interpreter, numpy and numba's code
  streaming    pipelines.overlap.build_filter: HyperLogLog pass, then insert pass
  previous     the exact-count build it replaces: np.unique of every hash of the rank, then insert
  partitioned  2 ranks, --max-memory at 3/4 of the filter: each rank holds half of it
  whole        2 ranks, no budget: each rank holds all of it
"Beyond the filter" is peak RSS minus the bytes of filter the rank holds; its 4x / 1x ratio is the
flatness figure. 8-grams/s is n-gram occurrences over build_filter's wall time (both passes). The
previous build's time is mostly np.unique, which on numpy 2.4 takes 44 s for 12M random uint64
where np.sort takes 0.5 s: compare its memory, not its speed.
Also measured: the HyperLogLog estimate against np.unique, its update rate against datasketch's
HyperLogLogPlusPlus, and the cost of checking a saved filter's checksum against reading the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness
from bench.harness import ROOT
from pipelines.bloom import BloomFilter
from pipelines.cardinality import HyperLogLog
from pipelines.mpi import world
from pipelines.ngrams import ngram_hashes_batch, words
from pipelines.overlap import _batches, build_filter, iter_texts

SENTENCES_A_DOC, DOCS_A_FILE, REPLACED = 30, 2000, 0.2


def sentence_pool() -> list[list[str]]:
    """The sentences of the bundled LAMBADA and WikiText-2 test sets as normalised word lists (so
    that a document's words, joined by spaces, are its n-gram words)."""
    lambada = [json.loads(line)["text"] for line in (ROOT / "data/eval/lambada/lambada_test.jsonl").open()]
    wikitext = (ROOT / "data/eval/wikitext-2-raw/wiki.test.raw").read_text().splitlines()
    sentences = (words(s) for text in lambada + wikitext for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in sentences if len(s) >= 3]


def documents(n_words: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Word ids of documents of 30 sentences, the pool shuffled again for each pass over it, one
    word in five replaced by a random vocabulary word; about `n_words` words in all."""
    pool, vocab = _pool_ids()
    rng = np.random.default_rng(seed)
    copies = 1 + n_words // sum(map(len, pool))
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(copies)])
    written = 0
    for start in range(0, len(order), SENTENCES_A_DOC):
        if written >= n_words:
            return
        ids = np.concatenate([pool[i] for i in order[start : start + SENTENCES_A_DOC]])
        replace = rng.random(len(ids)) < REPLACED
        ids[replace] = rng.integers(0, len(vocab), int(replace.sum()))
        written += len(ids)
        yield ids


def _pool_ids() -> tuple[list[np.ndarray], np.ndarray]:
    pool = sentence_pool()
    vocab = np.array(sorted({w for s in pool for w in s}))
    index = {w: i for i, w in enumerate(vocab)}
    return [np.array([index[w] for w in s]) for s in pool], vocab


def write_corpus(folder: Path, n_words: int) -> int:
    """The documents as jsonl files of 2,000 each; returns their 8-gram count."""
    vocab = _pool_ids()[1]
    folder.mkdir(parents=True)
    ngrams = 0
    for number, batch in enumerate(_batches(documents(n_words), DOCS_A_FILE)):
        with (folder / f"part-{number:05d}.jsonl").open("w") as out:
            for ids in batch:
                out.write(json.dumps({"text": " ".join(vocab[ids])}) + "\n")
                ngrams += max(0, len(ids) - 7)
    return ngrams


def previous_build_filter(path: Path) -> BloomFilter:
    """The build this module measures against: every distinct hash of the rank held, then sized."""
    chunks = [np.unique(ngram_hashes_batch(batch)[0]) for batch in _batches(iter_texts(path), 1024)]
    hashes = np.unique(np.concatenate(chunks))
    bloom = BloomFilter.for_items(len(hashes), 1e-8)
    bloom.add(hashes)
    return bloom


def child(mode: str, train: str, max_memory: int | None, report: str) -> None:
    """One measurement in this process; writes its peak RSS and time to REPORT.RANK.json."""
    start = time.perf_counter()
    if mode == "base":
        bloom = BloomFilter.for_items(1000, 1e-8)
        bloom.add(ngram_hashes_batch(["a few words to hash and insert into a small filter"] * 8)[0])
        held = 0
    elif mode == "previous":
        bloom = previous_build_filter(Path(train))
        held = bloom.blocks.nbytes
    else:
        bloom = build_filter([train], comm=world(), max_memory=max_memory)
        held = bloom.part_bytes if hasattr(bloom, "part_bytes") else bloom.blocks.nbytes
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    rank = world().Get_rank()
    figures = {"rank": rank, "seconds": seconds, "maxrss": rss, "filter_bytes": held,
               "whole_filter_bytes": bloom.n_bits // 8}
    Path(f"{report}.{rank}.json").write_text(json.dumps(figures))


def run_child(mode: str, train: Path | None = None, ranks: int = 1,
              max_memory: int | None = None) -> list[dict]:
    """The ranks' reports of one child run (sorted by rank)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        command = [sys.executable, "-m", "bench.overlap_scale", "--child", mode, "--train", str(train or ""),
                   "--report", str(report)]
        command += ["--max-memory", str(max_memory)] if max_memory else []
        if ranks > 1:
            command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *command]
        subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, check=True,
                       capture_output=True)
        return [json.loads(Path(f"{report}.{rank}.json").read_text()) for rank in range(ranks)]


def hll_figures(folder: Path) -> dict:
    """The sketch's estimate against np.unique on a corpus, and its update rate against datasketch's."""
    from datasketch import HyperLogLogPlusPlus  # here: the children measure memory without it

    hashes = np.concatenate([ngram_hashes_batch(b)[0] for b in _batches(iter_texts(folder), 1024)])
    sketch = HyperLogLog()
    sketch.add(hashes[:1000])  # compile outside the timing
    sketch = HyperLogLog()
    start = time.perf_counter()
    sketch.add(hashes)
    rate = len(hashes) / (time.perf_counter() - start)
    exact = len(np.unique(hashes))
    theirs = HyperLogLogPlusPlus(p=16)
    sample = [h.tobytes() for h in hashes[:200_000]]
    start = time.perf_counter()
    for item in sample:
        theirs.update(item)
    their_rate = len(sample) / (time.perf_counter() - start)
    error = sketch.estimate() / exact - 1
    return {"distinct": exact, "estimate": sketch.estimate(), "relative_error": error,
            "error_in_rse": error / sketch.relative_std_error, "rse": sketch.relative_std_error,
            "update_per_s": rate, "datasketch_hllpp_update_per_s": their_rate}


def checksum_cost(folder: Path, nbytes: int, repeat: int = 3) -> dict:
    """Seconds to read a saved filter of `nbytes` bytes, to load it with and without the checksum
    check (best of `repeat`; the file is in the page cache, the worst case for the check's share)."""
    bloom = BloomFilter(nbytes // 64, 1, 3)
    bloom.blocks[:] = np.random.default_rng(0).integers(0, 2**63, bloom.blocks.shape, dtype=np.uint64)
    path = folder / "filter.bloom"
    bloom.save(path)
    timings: dict[str, float] = {}
    buffer = bytearray(16 << 20)

    def read() -> None:
        with path.open("rb") as f:
            while f.readinto(buffer):
                pass

    for name, action in (("read_file", read), ("load_verify", lambda: BloomFilter.load(path)),
                         ("load_no_verify", lambda: BloomFilter.load(path, verify=False))):
        for _ in range(repeat):
            start = time.perf_counter()
            action()
            timings[name] = min(timings.get(name, np.inf), time.perf_counter() - start)
    return {"file_bytes": path.stat().st_size, **timings,
            "verify_over_read": (timings["load_verify"] - timings["load_no_verify"]) / timings["read_file"]}


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds runs (peak RSS and filter bytes of each child),
    the 4x / 1x ratios, hll and checksum."""
    mib = lambda b: round(b / 2**20, 1)
    table = harness.Table(["run", "8-grams", "seconds", "M 8-grams/s", "peak MiB", "filter MiB",
                           "beyond MiB"])
    for name, r in figures["runs"].items():
        rate = round(r["ngrams"] / r["seconds"] / 1e6, 2) if r.get("ngrams") else None
        table.add(name, r.get("ngrams", 0), round(r["seconds"], 2), rate, mib(r["maxrss"]),
                  mib(r["filter_bytes"]), mib(r["maxrss"] - r["filter_bytes"]))
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="the exact-count build it replaces (np.unique, then insert), in the same run; "
                  "datasketch's HyperLogLogPlusPlus for the sketch's update rate")


def notes(out: dict) -> list[str]:
    """The figures beyond the table, as lines."""
    lines = [f"memory beyond the filter, 4x / 1x, {name:<10}: {ratio:.3f}"
             for name, ratio in out["beyond_filter_4x_over_1x"].items()]
    h = out["hll"]
    lines.append(f"HyperLogLog on the 4x corpus: {h['estimate']:.0f} for {h['distinct']} distinct "
                 f"({100 * h['relative_error']:+.3f}%, {h['error_in_rse']:+.2f} rse of "
                 f"{100 * h['rse']:.2f}%); "
                 f"{h['update_per_s'] / 1e6:.1f} M updates/s, datasketch HLL++ "
                 f"{h['datasketch_hllpp_update_per_s'] / 1e6:.3f} M")
    c = out["checksum"]
    lines.append(f"checksum of a {c['file_bytes'] / 2**20:.1f} MiB filter: read {c['read_file']:.3f} s, "
                 f"load with check {c['load_verify']:.3f} s, without {c['load_no_verify']:.4f} s: the check "
                 f"costs {c['verify_over_read']:.2f}x a read")
    return lines


def measure(words: int, folder: Path) -> dict:
    ngrams = {scale: write_corpus(folder / scale, n) for scale, n in (("1x", words), ("4x", 4 * words))}
    runs = {"base": run_child("base")[0]}
    for scale in ngrams:
        for mode in ("streaming", "previous"):
            runs[f"{mode} {scale}"] = {**run_child(mode, folder / scale)[0], "ngrams": ngrams[scale]}
    whole = runs["streaming 4x"]["whole_filter_bytes"]
    for name, budget in (("whole", None), ("partitioned", whole * 3 // 4)):
        for report in run_child("streaming", folder / "4x", 2, budget):
            runs[f"{name} 4x 2 ranks, rank {report['rank']}"] = {**report, "ngrams": ngrams["4x"]}
    beyond = lambda run: run["maxrss"] - run["filter_bytes"]
    return {
        "words": {"1x": words, "4x": 4 * words},
        "runs": runs,
        "beyond_filter_4x_over_1x": {mode: beyond(runs[f"{mode} 4x"]) / beyond(runs[f"{mode} 1x"])
                                     for mode in ("streaming", "previous")},
        "beyond_base_and_filter_4x_over_1x": {
            mode: (beyond(runs[f"{mode} 4x"]) - runs["base"]["maxrss"])
            / (beyond(runs[f"{mode} 1x"]) - runs["base"]["maxrss"]) for mode in ("streaming", "previous")},
        "partitioned_rank_rss_over_whole": [runs[f"partitioned 4x 2 ranks, rank {r}"]["maxrss"]
                                            / runs[f"whole 4x 2 ranks, rank {r}"]["maxrss"] for r in (0, 1)],
        "hll": hll_figures(folder / "4x"),
        "checksum": checksum_cost(folder, whole),
    }


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--words", type=int, default=3_000_000, help="words of the 1x corpus")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--max-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train, args.max_memory, args.report)
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="overlap_scale-") as tmp:
        out = measure(args.words, Path(tmp))
    out["bench_seconds"] = time.perf_counter() - start
    settings = {"words": out.pop("words"), "sentences_a_doc": SENTENCES_A_DOC, "docs_a_file": DOCS_A_FILE,
                "replaced_fraction": REPLACED, "fp": 1e-8}
    print("\n".join(notes(out)))
    harness.report("overlap_scale", summarize(settings, out), args.json)


if __name__ == "__main__":
    main()
