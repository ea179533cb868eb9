"""checkpoint.keep_last: the newest K stay, the checkpoint a run resumed from is never deleted."""

from __future__ import annotations

import pytest

from megagpt import checkpoint
from megagpt.config import ConfigError, load_config


def make(folder, *steps):
    for step in steps:
        (folder / checkpoint.tag_for(step)).mkdir(parents=True)


def test_prune_keeps_the_newest(tmp_path):
    make(tmp_path, 10, 20, 30, 40)
    (tmp_path / "step00000050.tmp").mkdir()  # a save in progress is no published checkpoint
    deleted = checkpoint.prune(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["step00000010", "step00000020"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000030", "step00000040", "step00000050.tmp"]


def test_prune_never_deletes_the_checkpoint_resumed_from(tmp_path):
    make(tmp_path, 10, 20, 30)
    checkpoint.prune(tmp_path, keep_last=1, keep=tmp_path / "step00000010")
    assert [p.name for p in checkpoint.published(tmp_path)] == ["step00000010", "step00000030"]


def test_bad_fault_settings_are_refused_naming_the_key():
    for override, key in (("checkpoint.keep_last=-1", "checkpoint.keep_last"),
                          ("fault.collective_timeout_s=0", "fault.collective_timeout_s")):
        with pytest.raises(ConfigError, match=key):
            load_config("configs/tiny.yaml", [override])
    assert load_config("configs/tiny.yaml", ["checkpoint.keep_last=0"]).checkpoint.keep_last == 0
