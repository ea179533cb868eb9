"""Names the docs promise are names the code writes: shard files and their members, and the
README's TensorBoard tags (read from the source that writes them, so no training run is needed)."""

from __future__ import annotations

import ast
import re
import tarfile
from pathlib import Path

import numpy as np

from megagpt.formats.shards import ShardWriter, chunk_shard_pattern

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "megagpt/formats/shards.py"]


def test_documented_shard_file_names_are_the_ones_a_build_writes():
    written = chunk_shard_pattern(0).format(0)  # corpus-000000-000.tar
    placeholder = re.sub(r"\d+-\d+", "<chunk>-<part>", written)
    named = {(doc.name, name) for doc in DOCS
             for name in re.findall(r"corpus-[\w<>-]*\.tar", doc.read_text())}
    assert named, "no shard file named in the docs: is this test still reading the right files?"
    wrong = {(doc, name) for doc, name in named
             if re.sub(r"\d", "0", name) != written and name != placeholder}
    assert not wrong, f"docs name shard files a build does not write ({written}, {placeholder}): {wrong}"


def test_documented_shard_members_are_the_ones_a_writer_writes(tmp_path):
    with ShardWriter(tmp_path, 512) as writer:
        writer.write("abc", np.arange(5), {"source": "x", "url": None})
    with tarfile.open(tmp_path / writer.shards[0]["name"]) as tar:
        fields = {member.name.partition(".")[2] for member in tar.getmembers()}
    docstring = ast.get_docstring(ast.parse((ROOT / "megagpt/formats/shards.py").read_text()))
    documented = set(re.findall(r"`KEY\.([\w.]+)`", docstring))
    assert documented == fields == {"tokens.npy", "meta.json"}


def readme_tensorboard_tags() -> set[str]:
    text = (ROOT / "README.md").read_text()
    listed = re.search(r"TensorBoard events \((.*?)\)\.", text, re.DOTALL)
    assert listed, "README no longer lists its TensorBoard tags in 'TensorBoard events (...)'"
    return set(re.findall(r"`([\w/]+)`", listed[1]))


def _dict_keys(node: ast.AST) -> set[str]:
    """The keys of a dict literal or comprehension: constants as they are, an f-string as its
    constant parts with each formatted value written as UPPER (f"{name}_{k}" -> NAME_K)."""
    keys = set()
    for key in [node.key] if isinstance(node, ast.DictComp) else getattr(node, "keys", []):
        if isinstance(key, ast.Constant):
            keys.add(key.value)
        elif isinstance(key, ast.JoinedStr):
            keys.add("".join(v.value if isinstance(v, ast.Constant) else ast.unparse(v.value).upper()
                             for v in key.values))
    return keys


def _values_keys(function: ast.FunctionDef, name: str) -> set[str]:
    """Keys a function puts in the dict `name`: its literal and its `name["key"] = ...` lines."""
    keys = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    keys |= _dict_keys(node.value)
                elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                      and target.value.id == name and isinstance(target.slice, ast.Constant)):
                    keys.add(target.slice.value)
    return keys


def written_tensorboard_tags() -> set[str]:
    """The tags megagpt/train.py writes through MetricsWriter (megagpt/training/metrics.py):
    log -> PREFIX/NAME, per_rank -> TAG/rank_NNNNN, text -> TAG."""
    tags = set()
    tree = ast.parse((ROOT / "megagpt/train.py").read_text())
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            if not (isinstance(call.func, ast.Attribute) and ast.unparse(call.func.value) == "self.metrics"
                    and call.func.attr in ("log", "per_rank", "text")):
                continue
            tag = call.args[1].value
            if call.func.attr == "log":
                values = call.args[2]
                names = (_values_keys(function, values.id) if isinstance(values, ast.Name)
                         else _dict_keys(values))
                tags |= {f"{tag}/{name}" for name in names}
            elif call.func.attr == "per_rank":
                tags.add(f"{tag}/rank_NNNNN")
            elif call.func.attr == "text":
                tags.add(tag)
    return tags


def test_readme_tensorboard_tags_are_the_ones_a_run_writes():
    metrics = (ROOT / "megagpt/training/metrics.py").read_text()
    # the tag shapes written_tensorboard_tags assumes
    assert 'f"{prefix}/{name}"' in metrics and 'f"{tag}/rank_{rank:05d}"' in metrics
    written, documented = written_tensorboard_tags(), readme_tensorboard_tags()
    assert {"train/loss", "eval/loss", "memory/peak_gib/rank_NNNNN", "samples"} <= written  # the reader works
    assert documented == written, (f"README names tags no run writes: {documented - written}; "
                                   f"a run writes tags the README does not name: {written - documented}")
