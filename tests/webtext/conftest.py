"""Helpers of the WebText front-end tests: Reddit dumps in their published formats, subprocesses
started the way a user starts them."""

from __future__ import annotations

import bz2
import io
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[2]


def post(url: str, score: int = 5, *, created: int = 1_500_000_000, is_self: bool = False,
         subreddit: str = "news", over_18: bool = False) -> dict:
    """A submission with the fields link selection reads, among others a real dump has."""
    domain = "self." + subreddit if is_self else url.split("/")[2] if "//" in url else ""
    return {"url": url, "score": score, "is_self": is_self, "domain": domain, "subreddit": subreddit,
            "created_utc": created, "over_18": over_18, "title": "a title", "author": "someone",
            "num_comments": 3, "permalink": f"/r/{subreddit}/comments/abc/x/"}


def write_dump(path: Path, posts: list[dict | str]) -> Path:
    """Posts as JSON lines in the format of the path's suffix; .zst as Pushshift writes it: a
    2 GiB window (long-distance matching), no content size in the frame header."""
    data = "".join((p if isinstance(p, str) else json.dumps(p)) + "\n" for p in posts).encode()
    if path.suffix == ".zst":
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True)
        buffer = io.BytesIO()
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(buffer, closefd=False) as w:
            w.write(data)
        data = buffer.getvalue()
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    elif path.suffix == ".xz":
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


def read_links(folder: Path) -> list[dict]:
    """Every line of a LINKS folder's link files."""
    rows = []
    for file in sorted(folder.glob("links-*.jsonl*")):
        data = file.read_bytes()
        if file.suffix == ".zst":
            data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        rows += [json.loads(line) for line in data.splitlines()]
    return rows


def child_env(**extra: str) -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": bin_dir + os.pathsep + os.environ["PATH"], **extra}


def run_module(module: str, *args: str, ranks: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS`, or under `mpiexec -n RANKS` with the venv's launcher."""
    command = [sys.executable, "-m", module, *args]
    if ranks:
        command = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), *command]
    result = subprocess.run(command, env=child_env(), cwd=ROOT, timeout=timeout, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
