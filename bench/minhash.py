"""How fast are megagpt's MinHash signatures against datasketch's, on web pages?

    python -m bench.minhash [--repeat 3] [--num-perm 128] [--json bench/results/minhash-DATE.json]

MinHash signature throughput on web pages: megagpt's numpy MinHasher against datasketch.MinHash.
Documents: the main text of the 181 bundled web pages (data/sample/ground-truth.json). Both build
word 5-gram shingles of the same normalised words and a 128-permutation signature; datasketch
hashes each shingle string with a Python call (SHA-1 by default, or xxh3 given as hashfunc), then
permutes in numpy. One process, so documents a second are per core; contenders take turns within
each repeat and the best rate is kept. Ratio: megagpt / datasketch (above 1: megagpt is faster).
"""

from __future__ import annotations

import json
import time
from typing import Any

import xxhash
from datasketch import MinHash

from bench import harness
from bench.harness import ROOT
from pipelines import ngrams
from pipelines.minhash import MinHasher
from pipelines.ngrams import ngram_strings


def datasketch_signature(text: str, num_perm: int, hashfunc=None) -> MinHash:
    m = MinHash(num_perm=num_perm, **({"hashfunc": hashfunc} if hashfunc else {}))
    m.update_batch([s.encode() for s in ngram_strings(text, 5)])
    return m


def xxh32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def best_rates(docs: list[str], num_perm: int, repeat: int) -> dict[str, float]:
    """Documents a second of each contender, the best of `repeat` turns."""
    hasher = MinHasher(num_perm, 5)
    contenders = {
        "megagpt": lambda t: hasher.signature(t),
        "datasketch-sha1": lambda t: datasketch_signature(t, num_perm),
        "datasketch-xxh32": lambda t: datasketch_signature(t, num_perm, xxh32),
    }
    best = {name: 0.0 for name in contenders}
    for _ in range(repeat):
        for name, sign in contenders.items():
            t = time.perf_counter()
            for doc in docs:
                sign(doc)
            best[name] = max(best[name], len(docs) / (time.perf_counter() - t))
    return best


def summarize(settings: dict[str, Any], figures: dict[str, Any]) -> harness.Result:
    """The harness result of a run: `figures` holds documents, mean_words and docs_per_s by contender."""
    best = figures["docs_per_s"]
    figures["megagpt_over"] = {k: best["megagpt"] / v for k, v in best.items()}
    table = harness.Table(["contender", "docs/s", "megagpt / it"])
    for name, rate in best.items():
        table.add(name, round(rate), f"{figures['megagpt_over'][name]:.2f}x")
    return harness.Result(
        question=harness.question_of(__doc__), settings=settings, figures=figures, table=table,
        reference="datasketch.MinHash (SHA-1, and xxh32 as hashfunc) on the same pages, in the same run",
        goal=harness.Goal("megagpt faster than datasketch with either hash",
                          all(v > 1 for k, v in figures["megagpt_over"].items() if k != "megagpt")))


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    docs = [page["articleBody"] for page in truth.values()]
    best = best_rates(docs, args.num_perm, args.repeat)
    words = sum(len(ngrams.words(d)) for d in docs)
    settings = {"num_perm": args.num_perm, "shingle_words": 5, "repeat": args.repeat, "processes": 1,
                "documents": "the 181 bundled web pages' main text"}
    figures = {"documents": len(docs), "mean_words": words / len(docs), "docs_per_s": best}
    harness.report("minhash", summarize(settings, figures), args.json)


if __name__ == "__main__":
    main()
