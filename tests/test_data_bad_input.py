"""Shard folders that changed after their build are refused, naming the file and the fix.

The manifest records each shard's sha256 (ShardWriter) and the tokenizer's; the reader checks both.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from megagpt.formats.shards import MANIFEST_NAME, ShardError, ShardWriter, read_shard, write_manifest
from megagpt.formats.tokenizer import Tokenizer
from megagpt.training.data import RankBatches, ShardDataset
from tests.test_data import BLOCK, write_corpus
from tests.train.conftest import ROOT


def swap_tokenizer(shards: Path) -> None:
    """Replace the shard folder's tokenizer by another valid one, trained on other text."""
    Tokenizer.train((ROOT / "README.md").read_text().splitlines(), shards / "tokenizer.model", vocab_size=400)


def read_all(folder: Path) -> None:
    for _ in ShardDataset(folder, BLOCK, seed=0).iter_windows(epoch=0):
        pass


def token_bytes_offset(shard: Path) -> int:
    """Where in the tar the first document's token ids start (after the .npy header)."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith("tokens.npy"))
        header = io.BytesIO(tar.extractfile(member).read())
        np.lib.format.read_magic(header)
        np.lib.format.read_array_header_1_0(header)
        return member.offset_data + header.tell()


def test_the_manifest_records_each_shards_sha256(tmp_path):
    write_corpus(tmp_path)
    shards = json.loads((tmp_path / MANIFEST_NAME).read_text())["shards"]
    assert len(shards) > 3
    for shard in shards:
        assert shard["sha256"] == hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest()


def test_token_bytes_overwritten_within_the_vocabulary_are_caught_by_the_checksum(tmp_path):
    write_corpus(tmp_path)
    shard = tmp_path / "corpus-000000.tar"
    data = bytearray(shard.read_bytes())
    at = token_bytes_offset(shard)
    data[at:at + 2] = np.uint16(7).tobytes()  # a valid id: without the checksum this trains silently
    shard.write_bytes(bytes(data))
    assert sum(1 for _ in read_shard(shard)) > 0  # the tar still parses
    with pytest.raises(ShardError, match=f"{shard} does not match its sha256 in {tmp_path / MANIFEST_NAME}: "
                                         "it changed after the build .*; rebuild the folder"):
        read_all(tmp_path)


def test_out_of_vocabulary_ids_name_the_shard(tmp_path):
    # A shard whose checksum is right but whose ids are not this tokenizer's (vocabulary of 512).
    with ShardWriter(tmp_path, vocab_size=512) as writer:
        writer.write("doc0", np.arange(2, 600, dtype=np.uint16), {"source": "synthetic"})
    (tmp_path / "tokenizer.model").write_bytes(b"unused")
    write_manifest(tmp_path, {
        "format": "megagpt-shards/1", "shards": writer.shards, "stages": {},
        "tokenizer": {"file": "tokenizer.model", "sha256": "0" * 64, "vocab_size": 512, "eos_id": 1},
    })
    with pytest.raises(ShardError, match=f"{tmp_path / 'corpus-000000.tar'} holds token id 599, outside the "
                                         f"vocabulary of 512 of {tmp_path / 'tokenizer.model'}"):
        for _ in RankBatches(ShardDataset(tmp_path, BLOCK, seed=0), micro_batch=2, dp_rank=0, dp_size=1):
            pass


def test_a_manifest_without_checksums_is_read_with_a_warning(tmp_path, caplog):
    write_corpus(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]
    write_manifest(tmp_path, manifest)
    read_all(tmp_path)
    assert f"{tmp_path / MANIFEST_NAME} lists no sha256 for {len(manifest['shards'])} shard(s)" in caplog.text


def test_a_swapped_tokenizer_is_refused(corpus, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(corpus, shards)
    ShardDataset(shards, BLOCK, seed=0).load_tokenizer()  # the build's own: accepted
    swap_tokenizer(shards)
    with pytest.raises(ShardError, match=f"{shards / 'tokenizer.model'} is not the tokenizer "
                                         f"{shards / MANIFEST_NAME} was built with"):
        ShardDataset(shards, BLOCK, seed=0).load_tokenizer()
