"""Select WebText's links from Reddit submission dumps: outbound URLs with 3+ karma, one line a URL.

    python -m pipelines.links RS_2017-*.zst --output links [--min-karma 3] [--until 2017-12-01]
        [--from 2005-06-01] [--blocklist more-domains.txt] [--plain] [--drop-nsfw]
    mpiexec -n 8 python -m pipelines.links dumps/ --output links     # dumps and partitions over 8 ranks

Each dump is read as a stream (pipelines/crawl/dumps.py) and each submission is kept or dropped
by one named reason (pipelines/crawl/selection.py, urls.py). The kept links are spilled to runs
partitioned by host hash, then each partition is de-duplicated on its own (pipelines/crawl/
spill.py): one URL, one line, with its best score and first date. Both steps are units of the
work area LINKS/.work/ (pipelines/workarea.py): ranks and worker processes claim dumps and
partitions as they go, and a run that dies is continued by the same command from its finished
dumps and partitions. LINKS/ gets `links-PPPPP.jsonl.zst` (or `.jsonl` with --plain) and
`report.json`: submissions read, kept, dropped by reason, unique URLs, the top domains.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import zstandard
from tqdm import tqdm

from pipelines.crawl.dumps import DumpError, dump_lines, list_dumps
from pipelines.crawl.selection import Rules, parse_date, select
from pipelines.crawl.spill import RunWriter, merge, partition_lines, partitions_for, top_domains, url_order
from pipelines.crawl.urls import load_blocklist
from pipelines.mpi import LocalComm, abort, world
from pipelines.workarea import WorkArea, run_units, save_json

log = logging.getLogger("pipelines.links")
REPORT = "report.json"


def select_links(dumps: Sequence[str | Path], output: str | Path, rules: Rules | None = None, *,
                 partitions: int | None = None, plain: bool = False, workers: int | None = None,
                 force: bool = False, comm: Any = None) -> dict[str, Any]:
    """Write the links of `dumps` into `output` and return the report (on every rank)."""
    comm = comm or world()
    rules = rules or Rules()
    files = list_dumps([str(d) for d in dumps])
    output = Path(output)
    _check_output(output, force)
    if workers is None:
        workers = 1 if comm.Get_size() > 1 else len(os.sched_getaffinity(0))
    area = WorkArea(output / ".work")
    plan = None
    if comm.Get_rank() == 0:
        plan = _plan(area, files, rules, partitions, plain)
    plan = comm.bcast(plan, root=0)
    area.start_attempt(comm)
    parts = plan["partitions"]
    spill = area.stage("select")
    run_units(area, comm, "select", range(len(files)),
              lambda unit: _select_dump(area, files[unit], unit, rules, parts), workers)
    runs = [r for unit in range(len(files)) for r in area.record("select", unit)["runs"]]
    area.stage("merge")
    area.out.mkdir(parents=True, exist_ok=True)
    run_units(area, comm, "merge", range(parts),
              lambda part: _merge_partition(area, spill, runs, part, plain), workers)
    report = None
    if comm.Get_rank() == 0:
        report = _publish(area, output, len(files), parts, plan)
    return comm.bcast(report, root=0)


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; give a folder")
    if (output / REPORT).is_file():
        if not force:
            raise FileExistsError(f"--output {output} already holds finished links ({REPORT}); pass --force "
                                  "to select them again, or give another folder")
        for old in output.glob("links-*.jsonl*"):
            old.unlink()
        (output / REPORT).unlink()


def _plan(area: WorkArea, files: list[Path], rules: Rules, partitions: int | None, plain: bool) -> dict:
    """The run's plan, saved at its first attempt; a later attempt must be the same run."""
    plan = {"settings": asdict(rules) | {"plain": plain},
            "dumps": [[str(p), p.stat().st_size] for p in files],
            "partitions": partitions or partitions_for(files)}
    plan = json.loads(json.dumps(plan))
    saved = area.work / "plan.json"
    if saved.is_file():
        earlier = json.loads(saved.read_text())
        if partitions is None:
            plan["partitions"] = earlier["partitions"]
        if earlier != plan:
            changed = [k for k in plan if plan[k] != earlier[k]]
            raise ValueError(f"--output {area.root.parent} holds an unfinished run with other "
                             f"{' and '.join(changed)}; run the same command to continue it, or remove "
                             f"{area.root} to start over")
        log.info("continuing the link selection in %s", area.root)
    area.work.mkdir(parents=True, exist_ok=True)
    save_json(saved, plan)
    log.info("%d dumps, %.1f MB, %d partitions", len(files), sum(s for _, s in plan["dumps"]) / 1e6,
             plan["partitions"])
    return plan


def _select_dump(area: WorkArea, path: Path, unit: int, rules: Rules, parts: int) -> None:
    """One dump: every submission kept (spilled to runs by partition) or dropped by reason."""
    runs = RunWriter(area.stage("select"), f"{unit:06d}", parts)
    dropped: Counter = Counter()
    read = kept = 0
    with tqdm(total=path.stat().st_size, desc=path.name, unit="B", unit_scale=True, leave=False,
              mininterval=2) as bar:
        for line in dump_lines(path, bar.update):
            if not line.strip():
                continue
            read += 1
            link, reason = select(line, rules)
            if link is None:
                dropped[reason] += 1
            else:
                kept += 1
                runs.add(link)
    area.finish("select", unit, {"dump": str(path), "read": read, "kept": kept,
                                 "dropped": dict(sorted(dropped.items())), "runs": runs.close()})


def _merge_partition(area: WorkArea, spill: Path, runs: list[str], part: int, plain: bool) -> None:
    best, merged = merge(partition_lines(spill, runs, part))
    name = f"links-{part:05d}.jsonl" + ("" if plain else ".zst")
    tmp = area.out / f"{name}.tmp"
    raw = tmp.open("wb")
    out = raw if plain else zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
    with out:
        for url in sorted(best, key=url_order):
            score, created, subreddit = best[url]
            out.write(json.dumps({"url": url, "score": score, "created_utc": created,
                                  "subreddit": subreddit}, ensure_ascii=False).encode() + b"\n")
    os.replace(tmp, area.out / name)
    area.finish("merge", part, {"file": name, "merged": merged, "unique": len(best),
                                "top_domains": top_domains(best)})


def _publish(area: WorkArea, output: Path, dumps: int, parts: int, plan: dict) -> dict[str, Any]:
    """Sum the units' counts into the report, move the link files into place, report last."""
    read = kept = merged = unique = 0
    dropped: Counter = Counter()
    domains: Counter = Counter()
    per_dump = {}
    for unit in range(dumps):
        record = area.record("select", unit)
        read, kept = read + record["read"], kept + record["kept"]
        dropped.update(record["dropped"])
        per_dump[Path(record["dump"]).name] = {k: record[k] for k in ("read", "kept")}
    files = []
    for part in range(parts):
        record = area.record("merge", part)
        merged, unique = merged + record["merged"], unique + record["unique"]
        domains.update(dict(record["top_domains"]))
        files.append(record["file"])
    if read != kept + sum(dropped.values()) or merged != kept:
        raise AssertionError(f"counts do not reconcile: read {read}, kept {kept}, "
                             f"dropped {sum(dropped.values())}, merged {merged}")
    report = {"submissions_read": read, "kept": kept, "dropped": dict(sorted(dropped.items())),
              "unique_urls": unique, "duplicates_merged": kept - unique,
              "top_domains": dict(sorted(domains.items(), key=lambda item: (-item[1], item[0]))[:100]),
              "files": files, "per_dump": per_dump, "settings": plan["settings"], "partitions": parts}
    for name in files:
        os.replace(area.out / name, output / name)
    save_json(output / REPORT, report)
    shutil.rmtree(area.root)
    log.info("%d submissions read, %d kept, %d unique URLs; dropped: %s", read, kept, unique,
             " ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.links", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("dumps", nargs="+", metavar="DUMP", help="RS_YYYY-MM.zst (.bz2, .xz, .jsonl) files or folders")
    add("--output", required=True, metavar="LINKS", help="folder for the link files and report.json")
    add("--min-karma", type=int, default=3, help="keep submissions with score >= this (WebText: 3)")
    add("--from", dest="since", metavar="YYYY-MM-DD", help="keep submissions posted on or after")
    add("--until", metavar="YYYY-MM-DD", help="keep submissions posted before (WebText: 2017-12-01)")
    parser.add_argument("--blocklist", metavar="FILE", help="more domains to drop, one a line (added to the "
                        "default image and video hosts)")
    add("--drop-nsfw", action="store_true", help="drop over_18 submissions (WebText kept them)")
    parser.add_argument("--plain", action="store_true", help="write .jsonl rather than .jsonl.zst")
    parser.add_argument("--partitions", type=int, help="hash partitions of the de-duplication (default: from "
                        "the input size, so each holds ~100k submissions)")
    parser.add_argument("--workers", type=int, help="processes a rank (default: all cores; 1 under MPI)")
    parser.add_argument("--force", action="store_true", help="select again into a finished --output")
    args = parser.parse_args(argv)
    comm = world()
    logging.basicConfig(level=logging.INFO if comm.Get_rank() == 0 else logging.WARNING, format="%(message)s")
    try:
        if args.min_karma < 0 or (args.partitions is not None and not 1 <= args.partitions <= 4096):
            raise ValueError("--min-karma must be >= 0 and --partitions within 1-4096")
        rules = Rules(args.min_karma, parse_date(args.since, "--from"), parse_date(args.until, "--until"),
                      load_blocklist(args.blocklist), args.drop_nsfw)
        select_links(args.dumps, args.output, rules, partitions=args.partitions, plain=args.plain,
                     workers=args.workers, force=args.force, comm=comm)
    except (ValueError, FileNotFoundError, FileExistsError, DumpError) as err:
        print(f"pipelines.links: error: {err}", file=sys.stderr)
        if not isinstance(comm, LocalComm) and comm.Get_size() > 1:
            abort(comm, 2)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
