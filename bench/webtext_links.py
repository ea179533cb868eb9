"""How fast does link selection read Reddit dumps (MB/s a core); is its memory flat as a dump grows 4x?

    python -m bench.webtext_links [--sizes 50 200] [--json OUT.json]

The dumps are written here (never committed): submissions with the fields and sizes of the
published RS_YYYY-MM files (about 1.4 KB of JSON each, 40% self posts, scores mostly 1, links
spread over 20k hosts by a Zipf law, some Wikipedia, media and tracking parameters), compressed
as Pushshift does (zstd, 2 GiB window). Each size is selected by a fresh
`python -m pipelines.links DUMP --workers 1` (one process: one core) whose peak resident memory
(ru_maxrss) and CPU seconds come from wait4. The reference, run in the same way on the same
dump: decompressing it and `json.loads` of every line, the least any selection must do.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import zstandard

from bench import harness
from bench._process_memory import measure_child

ROOT = Path(__file__).resolve().parents[1]

FIELDS = {"archived": False, "author_flair_css_class": None, "author_flair_text": None,
          "brand_safe": True,
          "contest_mode": False, "distinguished": None, "edited": False, "gilded": 0, "hidden": False,
          "hide_score": False, "locked": False, "media": None, "media_embed": {}, "num_crossposts": 0,
          "parent_whitelist_status": "all_ads", "post_hint": "link", "quarantine": False, "retrieved_on": 1,
          "secure_media": None, "secure_media_embed": {}, "spoiler": False, "stickied": False,
          "suggested_sort": None, "thumbnail_height": 78, "thumbnail_width": 140,
          "whitelist_status": "all_ads"}
FLOOR = ("import sys, json, zstandard\n"
         "f = open(sys.argv[1], 'rb')\n"
         "r = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(f, read_size=1 << 20)\n"
         "rest = b''\n"
         "while block := r.read(1 << 20):\n"
         "    lines = (rest + block).split(b'\\n'); rest = lines.pop()\n"
         "    for line in lines: json.loads(line)\n")


def submission(rng: random.Random, n: int) -> dict:
    host = f"site{min(int(rng.paretovariate(0.9)), 20000)}.example.com"
    kind = rng.random()
    url = (f"https://{host}/news/{n}/a-story-title-{rng.randint(0, 10**6)}"
           + ("?utm_source=reddit&utm_medium=social" if rng.random() < 0.2 else ""))
    if kind < 0.02:
        url = f"https://en.wikipedia.org/wiki/Article_{n}"
    elif kind < 0.12:
        url = f"https://i.imgur.com/{n:x}.jpg"
    is_self = rng.random() < 0.4
    score = 1 if rng.random() < 0.7 else int(rng.paretovariate(0.6))
    sub = f"sub{rng.randint(0, 5000)}"
    return {**FIELDS, "author": f"user{rng.randint(0, 10**6)}", "created_utc": 1_500_000_000 + n,
            "domain": f"self.{sub}" if is_self else host, "id": f"{n:x}", "is_self": is_self,
            "num_comments": rng.randint(0, 50), "over_18": rng.random() < 0.05,
            "permalink": f"/r/{sub}/comments/{n:x}/a_story_title/", "score": score,
            "selftext": "some words of a self post " * rng.randint(0, 8) if is_self else "",
            "subreddit": sub, "subreddit_id": "t5_2qh0u", "thumbnail": "default",
            "title": "A title of a story that someone posted " * 2, "url": url}


def write_dump(path: Path, megabytes: int, seed: int = 0) -> int:
    """A zstd dump of about `megabytes` MB of JSON lines; returns its decompressed bytes."""
    rng = random.Random(seed)
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True, threads=-1)
    written, n = 0, 0
    compressor = zstandard.ZstdCompressor(compression_params=params)
    with path.open("wb") as raw, compressor.stream_writer(raw) as out:
        while written < megabytes * 1_000_000:
            block = io.BytesIO()
            for _ in range(2000):
                block.write(json.dumps(submission(rng, n)).encode() + b"\n")
                n += 1
            out.write(block.getvalue())
            written += block.tell()
    return written


def measured(command: list[str]) -> dict:
    """Wall and CPU seconds and peak resident memory of one child process."""
    return measure_child(command, {**os.environ, "PYTHONPATH": str(ROOT)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="MB of JSON in each dump")
    parser.add_argument("--json", help="where to write the result (default bench/results/)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-links-"))
    table = harness.Table(["dump MB (JSON)", "zst MB", "submissions kept", "links CPU s", "MB/s a core",
                           "floor MB/s", "peak RSS MiB", "floor peak RSS MiB"])
    runs = []
    try:
        for mb in args.sizes:
            dump = work / f"RS_2017-{mb:04d}.zst"
            raw = write_dump(dump, mb)
            out = work / f"links-{mb}"
            run = measured([sys.executable, "-m", "pipelines.links", str(dump), "--output", str(out),
                            "--workers", "1"])
            floor = measured([sys.executable, "-c", FLOOR, str(dump)])
            report = json.loads((out / "report.json").read_text())
            run |= {"json_mb": raw / 1e6, "zst_mb": dump.stat().st_size / 1e6, "kept": report["kept"],
                    "submissions": report["submissions_read"], "unique_urls": report["unique_urls"],
                    "partitions": report["partitions"], "mb_s_a_core": raw / 1e6 / run["cpu_s"],
                    "floor_mb_s": raw / 1e6 / floor["cpu_s"], "floor_peak_rss_mib": floor["peak_rss_mib"]}
            runs.append(run)
            table.add(round(run["json_mb"]), round(run["zst_mb"], 1), run["kept"], round(run["cpu_s"], 1),
                      run["mb_s_a_core"], run["floor_mb_s"], run["peak_rss_mib"], run["floor_peak_rss_mib"])
            shutil.rmtree(out)
            dump.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    growth = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    # The zstd window is the format's: a decoder keeps up to 2 GiB of history of a long-window
    # dump, so every reader's memory grows with the dump up to that. Ours is what is above it.
    own = [r["peak_rss_mib"] - r["floor_peak_rss_mib"] for r in runs]
    own_growth = own[-1] - own[0]
    size_ratio = runs[-1]["json_mb"] / runs[0]["json_mb"]
    result = harness.Result(
        question=harness.question_of(__doc__),
        settings={"sizes_mb": args.sizes, "workers": 1,
                  "dump": "synthetic RS_*.zst, zstd level 3, 2 GiB window"},
        figures={"runs": runs, "peak_rss_growth": growth, "input_growth": size_ratio,
                 "own_rss_mib_above_floor": own, "mb_s_a_core": runs[-1]["mb_s_a_core"],
                 "share_of_floor": runs[-1]["mb_s_a_core"] / runs[-1]["floor_mb_s"]},
        table=table,
        reference="decompress + json.loads of every line of the same dump, one process (the floor: its "
                  "peak RSS is the zstd window's)",
        goal=harness.Goal(f"peak RSS above the floor's grows by < 30% of the smaller run's peak while the "
                          f"dump grows {size_ratio:.0f}x", own_growth < 0.3 * runs[0]["peak_rss_mib"]))
    harness.report("webtext_links", result, args.json)


if __name__ == "__main__":
    main()
