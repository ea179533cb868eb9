"""MinHash signature throughput on web pages: megagpt's numpy MinHasher against datasketch.MinHash.

    python bench/minhash.py [--repeat 3] [--num-perm 128] [--json bench/results/minhash-DATE.json]

Documents: the main text of the 181 bundled web pages (data/sample/ground-truth.json). Both build
word 5-gram shingles of the same normalised words and a 128-permutation signature; datasketch
hashes each shingle string with a Python call (SHA-1 by default, or xxh3 given as hashfunc), then
permutes in numpy. One process, so documents a second are per core; contenders take turns within
each repeat and the best rate is kept. Ratio: megagpt / datasketch (above 1: megagpt is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import xxhash
from datasketch import MinHash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines import ngrams  # noqa: E402
from pipelines.minhash import MinHasher  # noqa: E402
from pipelines.ngrams import ngram_strings  # noqa: E402


def datasketch_signature(text: str, num_perm: int, hashfunc=None) -> MinHash:
    m = MinHash(num_perm=num_perm, **({"hashfunc": hashfunc} if hashfunc else {}))
    m.update_batch([s.encode() for s in ngram_strings(text, 5)])
    return m


def xxh32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--json", default=str(ROOT / f"bench/results/minhash-{date.today()}.json"))
    args = parser.parse_args()
    truth = json.loads((ROOT / "data/sample/ground-truth.json").read_text())
    docs = [page["articleBody"] for page in truth.values()]
    hasher = MinHasher(args.num_perm, 5)
    contenders = {
        "megagpt": lambda t: hasher.signature(t),
        "datasketch-sha1": lambda t: datasketch_signature(t, args.num_perm),
        "datasketch-xxh32": lambda t: datasketch_signature(t, args.num_perm, xxh32),
    }
    best = {name: 0.0 for name in contenders}
    for _ in range(args.repeat):
        for name, sign in contenders.items():
            t = time.perf_counter()
            for doc in docs:
                sign(doc)
            best[name] = max(best[name], len(docs) / (time.perf_counter() - t))
    words = sum(len(ngrams.words(d)) for d in docs)
    print(f"{len(docs)} web pages ({words / len(docs):.0f} words each on average), "
          f"{args.num_perm} permutations, "
          "one process")
    print(f"{'':<18}{'docs/s':>10}{'megagpt / it':>14}")
    for name, rate in best.items():
        print(f"{name:<18}{rate:>10.0f}{best['megagpt'] / rate:>13.2f}x")
    out = {"documents": len(docs), "mean_words": words / len(docs), "num_perm": args.num_perm,
           "docs_per_s": best, "megagpt_over": {k: best["megagpt"] / v for k, v in best.items()},
           "machine": {"python": platform.python_version(), "load_average": os.getloadavg()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
