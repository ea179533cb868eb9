"""Bad input to the trainer gets an error naming the file or option and the fix, or a counted skip.

Config and checkpoint-folder cases are checked in-process; the others start the trainer as a user
would (one process, or two DeepSpeed ranks where the check is a collective) on real files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from megagpt import checkpoint
from megagpt.checkpoint import CheckpointError, DamagedCheckpoint
from megagpt.config import ConfigError, load_config
from tests.test_data_bad_input import swap_tokenizer
from tests.train.conftest import ROOT, read_metrics, run_training

TINY = ROOT / "configs/tiny.yaml"
QUIET = ("eval.interval=0", "sample.max_new_tokens=0")


def train_alone(run: Path, corpus: Path, *overrides: str):
    """One trainer process (no launcher): the cheapest real run."""
    return run_training(run, corpus, *QUIET, *overrides, launcher="python", nproc=1, check=False)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 3\n  lr: [1e-3\n")
    with pytest.raises(ConfigError) as refused:
        load_config(bad)
    # where PyYAML gave up (the end) and where the unclosed list began
    assert (f"{bad} is not valid YAML: expected ',' or ']', but got '<stream end>' at line 4, column 1 "
            "(while parsing a flow sequence from line 3, column 7); fix the file there") == str(refused.value)


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr='nan' in {tiny} + command-line overrides is not a finite number; give a "
                     "real value"),
    ("train.lr=.inf", "train.lr=inf in {tiny} + command-line overrides is not a finite number"),
    ("train.lr=[", "override 'train.lr=[' is not a valid YAML value: "),
    ("train.on_nonfinite=ignore", "train.on_nonfinite='ignore' in {tiny} + command-line overrides: "
                                  "choose one of ('stop', 'skip', 'rewind')"),
    ("sample.temperature=-1", "sample.temperature must be 0 or positive, got -1.0"),
    ("sample.max_new_tokens=-5", "sample.max_new_tokens must be 0 or positive, got -5"),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as refused:
        load_config(TINY, [override])
    assert message.format(tiny=TINY) in str(refused.value)


def make_checkpoints(folder: Path, *steps: int) -> None:
    """Published checkpoint folders with a file each and their checksums, as save() leaves them."""
    for step in steps:
        path = folder / checkpoint.tag_for(step)
        path.mkdir(parents=True)
        (path / "__0_0.distcp").write_bytes(bytes(range(256)) * 4 * step)
        (path / "model_config.json").write_text("{}\n")
        checkpoint.write_checksums(path)


def test_empty_or_garbled_latest_names_the_file_and_the_newest_checkpoint(tmp_path):
    make_checkpoints(tmp_path, 10, 20)
    for text in ("", "\n", "step20"):
        (tmp_path / "latest").write_text(text)
        with pytest.raises(CheckpointError, match=f"{tmp_path / 'latest'} holds .* not a checkpoint name "
                                                  r"like step00000050: write the name of the newest good one "
                                                  r"\(step00000020\) into it"):
            checkpoint.latest(tmp_path)
    (tmp_path / "latest").write_text("step00000030")
    with pytest.raises(CheckpointError, match="names step00000030, which is missing"):
        checkpoint.latest(tmp_path)


def test_damaged_checkpoint_files_are_named_with_the_previous_checkpoint(tmp_path):
    make_checkpoints(tmp_path, 10, 20)
    newest = tmp_path / "step00000020"
    weights = newest / "__0_0.distcp"
    checkpoint.verify(newest)  # intact: passes

    data = weights.read_bytes()
    weights.write_bytes(data[:-7])  # truncated, as by a full disk
    with pytest.raises(DamagedCheckpoint, match=(
            f"checkpoint {newest} is damaged: {weights} has {len(data) - 7} bytes, {len(data)} when saved "
            rf"\(truncated or overwritten\); the previous checkpoint is {tmp_path / 'step00000010'}: "
            f"resume from it with train.resume={tmp_path / 'step00000010'}")):
        checkpoint.verify(newest)

    weights.write_bytes(data[:100] + b"\xff" + data[101:])  # same size, one byte changed
    with pytest.raises(DamagedCheckpoint, match=f"{weights} does not match its checksum in checksums.json"):
        checkpoint.verify(newest)

    weights.unlink()
    with pytest.raises(DamagedCheckpoint, match=f"{weights} is missing"):
        checkpoint.verify(newest)
    with pytest.raises(DamagedCheckpoint, match="no earlier checkpoint is in its folder"):
        (tmp_path / "step00000010" / "model_config.json").write_text("{ }\n")
        checkpoint.verify(tmp_path / "step00000010")


def test_pruning_keeps_what_latest_names_even_when_older_checkpoints_have_higher_steps(tmp_path):
    make_checkpoints(tmp_path, 100, 200, 5)  # a longer run's 100 and 200, then this run's 5
    (tmp_path / "latest").write_text("step00000005")
    checkpoint.prune(tmp_path, keep_last=1)
    assert [p.name for p in checkpoint.published(tmp_path)] == ["step00000005", "step00000200"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step00000005"


@pytest.fixture(scope="module")
def short_run(corpus, tmp_path_factory) -> Path:
    """A real one-process run of 2 steps with a checkpoint after each."""
    run = tmp_path_factory.mktemp("short") / "run"
    proc = train_alone(run, corpus, "train.max_steps=2", "checkpoint.interval=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.mark.slow
def test_fresh_run_into_another_runs_checkpoints_is_refused(short_run, corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    proc = train_alone(run, corpus, "train.max_steps=3", "train.resume=never")
    assert proc.returncode == 2
    assert (f"checkpoint.dir={run / 'checkpoints'} already holds another run's checkpoints (step00000001 to "
            "step00000002); train.resume=never would mix this run's with them: continue that run with "
            "train.resume=auto, or start this one in a new log.dir") in proc.stderr
    assert "step 1/3" not in proc.stderr
    assert [p.name for p in checkpoint.published(run / "checkpoints")] == ["step00000001", "step00000002"]


@pytest.mark.slow
def test_an_empty_latest_is_named_with_the_checkpoint_to_write_into_it(short_run, corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    (run / "checkpoints" / "latest").write_text("")
    proc = train_alone(run, corpus, "train.max_steps=3")
    assert proc.returncode == 2
    assert (f"{run / 'checkpoints' / 'latest'} holds '', not a checkpoint name like step00000050: write the "
            "name of the newest good one (step00000002) into it") in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resuming_with_another_model_shape_names_both_values(short_run, corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    proc = train_alone(run, corpus, "train.max_steps=3", "model.block_size=64", "model.n_embd=128")
    assert proc.returncode == 2
    assert (f"{run / 'checkpoints' / 'step00000002'} was saved with model.n_embd=64, model.block_size=32 but "
            "this run has model.n_embd=128, model.block_size=64: resume with the checkpoint's model "
            "settings") in proc.stderr


@pytest.mark.slow
def test_swapped_tokenizer_in_the_shard_folder_is_refused_at_start_and_resume(short_run, corpus, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(corpus, shards)
    swap_tokenizer(shards)
    for run in (tmp_path / "fresh", shutil.copytree(short_run, tmp_path / "resumed")):
        proc = train_alone(run, shards, "train.max_steps=3")
        assert proc.returncode == 2
        assert (f"{shards / 'tokenizer.model'} is not the tokenizer {shards / 'manifest.json'} was built "
                "with") in proc.stderr
        assert "put the build's tokenizer back, or rebuild the shards with this one" in proc.stderr


@pytest.mark.slow
def test_unwritable_folders_are_refused_before_any_compute(corpus, tmp_path):
    blocker = tmp_path / "a-file"  # a folder cannot be made inside a file, even by root
    blocker.write_text("")
    for override, key in ((f"checkpoint.dir={blocker / 'ckpt'}", "checkpoint.dir"),
                          (f"log.dir={blocker / 'run'}", "log.dir")):
        proc = train_alone(tmp_path / "run", corpus, "train.max_steps=3", override)
        assert proc.returncode == 2
        assert f"{key}={blocker}/" in proc.stderr and "is not writable (Not a directory): choose a folder " \
                                                         "you can write to" in proc.stderr
        assert "layout:" in proc.stderr and "ds_config: filled" not in proc.stderr  # no engine built


@pytest.mark.slow
def test_diverging_run_stops_before_saving_with_a_nonzero_exit(corpus, tmp_path):
    run = tmp_path / "run"
    # lr 1e4 on the tiny model: finite losses at steps 1 and 2, then NaN loss and an infinite grad norm.
    proc = train_alone(run, corpus, "train.max_steps=6", "train.lr=1e4", "checkpoint.interval=1",
                       "checkpoint.keep_last=0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert ("step 3: loss nan and grad norm inf: training diverged. The run stops without saving this step; "
            f"the checkpoints in {run / 'checkpoints'} are as they were. Lower train.lr (now 10000.0)"
            ) in proc.stderr
    assert [p.name for p in checkpoint.published(run / "checkpoints")] == ["step00000001", "step00000002"]
    assert checkpoint.latest(run / "checkpoints").name == "step00000002"
    assert [m["step"] for m in read_metrics(run)] == [1, 2]  # nothing logged for the bad step either
    # step 2's loss is finite but a spike (about 1e9 after 6.3): `latest` is not the one to resume from
    assert read_metrics(run)[1]["loss"] > 1e6
    good = run / "checkpoints" / "step00000001"
    assert f"resume from {good} (train.resume={good}), the newest checkpoint whose loss was sane" \
        in proc.stderr


@pytest.mark.slow
def test_rewind_goes_back_to_the_last_sane_checkpoint_at_most_three_times(corpus, tmp_path):
    run = tmp_path / "run"
    proc = train_alone(run, corpus, "train.max_steps=8", "train.lr=1e4", "train.on_nonfinite=rewind",
                       "checkpoint.interval=1", "checkpoint.keep_last=0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    for n in (1, 2, 3):
        assert f"rewound to step00000001 (train.on_nonfinite=rewind, {n} of 3), the batches since skipped" \
            in proc.stderr
    assert "training diverged and rewound 3 times already (at most 3)" in proc.stderr
    logged = read_metrics(run)
    assert [m["rewinds"] for m in logged][:2] == [0, 0]
    assert {m["rewinds"] for m in logged[2:]} <= {1, 2, 3} and len(logged) > 2  # steps retried, counted
    # each retry read new batches: the data position went on past the ones before the spike
    windows = [torch.load(p / "trainer_state.pt", weights_only=True)["client_state"]["data"]["window"]
               for p in checkpoint.published(run / "checkpoints")]
    assert windows == sorted(windows)


@pytest.mark.slow
def test_skipping_non_finite_steps_leaves_the_weights_unchanged_and_counts_them(corpus, tmp_path):
    run = tmp_path / "run"
    proc = train_alone(run, corpus, "train.max_steps=5", "train.lr=1e4", "train.on_nonfinite=skip",
                       "checkpoint.interval=1", "checkpoint.keep_last=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: loss nan and grad norm inf; skipped (train.on_nonfinite=skip)" in proc.stderr
    logged = [m for m in read_metrics(run) if "loss" in m]  # read_metrics: json.loads of each line
    assert [m["skipped_steps"] for m in logged] == [0, 0, 1, 2, 3]
    assert [m["nonfinite"] for m in logged] == [0, 0, 1, 1, 1]  # log.interval=1: a step a line
    assert [m["loss"] is None for m in logged] == [False, False, True, True, True]  # null, never NaN
    assert "NaN" not in (run / "metrics.jsonl").read_text()

    def weights(step):
        return checkpoint.consolidated_state_dict(run / "checkpoints" / checkpoint.tag_for(step))

    two = weights(2)
    assert any(not torch.equal(two[k], v) for k, v in weights(1).items())  # a step that was applied
    for step in (3, 5):  # skipped: not a single weight moved
        assert all(torch.equal(two[k], v) for k, v in weights(step).items()), step
    state = json.loads((run / "checkpoints" / "step00000005" / "checksums.json").read_text())
    assert {"__0_0.distcp", ".metadata", "trainer_state.pt"} <= set(state)


@pytest.mark.slow
def test_damaged_latest_falls_back_under_auto_and_is_named_otherwise(corpus, tmp_path):
    run = tmp_path / "run"
    steps = ("train.max_steps=2", "checkpoint.interval=1", *QUIET)
    run_training(run, corpus, *steps)  # two DeepSpeed ranks: each hashes and verifies its share
    ckpt = run / "checkpoints"
    states = sorted((ckpt / "step00000002").glob("*.distcp"))  # one a rank
    assert len(states) == 2
    states[1].write_bytes(states[1].read_bytes()[:1000])  # truncated

    proc = run_training(run, corpus, "train.max_steps=3", f"train.resume={ckpt / 'step00000002'}", *QUIET,
                        check=False)
    assert proc.returncode != 0
    assert (f"checkpoint {ckpt / 'step00000002'} is damaged: {states[1]} has 1000 bytes") in proc.stderr
    assert f"the previous checkpoint is {ckpt / 'step00000001'}" in proc.stderr

    proc = run_training(run, corpus, "train.max_steps=3", "checkpoint.interval=1", *QUIET)  # resume=auto
    log = proc.stdout + proc.stderr
    assert f"Falling back to {ckpt / 'step00000001'} (train.resume=auto)" in log
    assert f"resumed from {ckpt / 'step00000001'}" in log
    assert checkpoint.latest(ckpt).name == "step00000003"
    checkpoint.verify(ckpt / "step00000002")  # step 2 was saved again, whole
