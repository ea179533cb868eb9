"""Which layouts run, which are refused and why: decided from the config alone, before any compute."""

from __future__ import annotations

import pytest

from megagpt.config import ConfigError, load_config
from megagpt.sizing.layout_rules import describe_layout, plan_layout
from megagpt.sizing.parameters import stage_parameters
from tests.train.conftest import run_training


def plan(world: int, *overrides: str):
    return plan_layout(load_config("configs/tiny.yaml", list(overrides)), world)


def test_dp_is_what_is_left_and_zero_auto_is_3_with_pipelines_too():
    layout = plan(8, "parallel.tp=2", "parallel.pp=2")
    assert (layout.dp, layout.pp, layout.tp, layout.zero_stage) == (2, 2, 2, 3)
    assert plan(4, "parallel.tp=2").zero_stage == 3
    assert plan(2, "parallel.zero_stage=2").zero_stage == 2
    assert plan(4, "parallel.pp=2", "parallel.zero_stage=2").zero_stage == 2  # megagpt's own schedule


@pytest.mark.parametrize("world, overrides, message", [
    (4, ["parallel.tp=3"], r"world size 4 is not divisible by parallel.tp x parallel.pp = 3 x 1.*"
                           r"these run: tp=1 pp=1, tp=1 pp=2, tp=2 pp=1, tp=2 pp=2, tp=4 pp=1"),
    (8, ["parallel.tp=8"],
     r"parallel.tp=8 does not divide model.n_head=4.*use tp in \[1, 2, 4\] \(with tp x pp"),
    (2, ["parallel.tp=2", "model.vocab_size=513", "model.vocab_pad_multiple=1"],
     r"does not divide the padded vocabulary \(513 = model.vocab_size=513.*model.vocab_pad_multiple=256"),
    (4, ["parallel.pp=4"], r"parallel.pp=4 is more than model.n_layer=2.*pp <= 2"),
    (1, ["parallel.activation_checkpoint=-1"],
     r"parallel.activation_checkpoint must be 0 or positive, got -1"),
    (2, ["parallel.compile=true"], r"compile=true with parallel.pp=1 and zero stage 3.*"
                                   r"recompiles at every module.*pp=1 and parallel.zero_stage 0-2"),
    (2, ["parallel.compile=true", "parallel.pp=2", "parallel.zero_stage=1"],
     r"compile=true with parallel.pp=2 and zero stage 1"),
])
def test_impossible_layouts_are_refused_with_why_and_what_runs(world, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(world, *overrides)


def test_bad_values_are_refused_by_the_config():
    with pytest.raises(ConfigError, match="parallel.tp must be positive"):
        load_config("configs/tiny.yaml", ["parallel.tp=0"])
    with pytest.raises(ConfigError, match="parallel.zero_stage=4.*choose one of"):
        load_config("configs/tiny.yaml", ["parallel.zero_stage=4"])


def test_gpt2_xl_cannot_split_its_25_heads_over_2_ranks():
    cfg = load_config("configs/gpt2-xl.yaml", ["parallel.tp=2", "parallel.pp=2"])
    with pytest.raises(ConfigError, match=r"n_head=25.*use tp in \[1, 5, 25\]"):
        plan_layout(cfg, 16)


def test_layout_line_counts_parameters_and_memory():
    cfg = load_config("configs/gpt2-xl.yaml", ["parallel.pp=2"])
    total = stage_parameters(cfg.model, pp=1, tp=1)
    assert total == 1_557_611_200 + 47 * 1600  # GPT-2 XL as Hugging Face counts it + 47 padding rows
    line = describe_layout(plan_layout(cfg, 16), cfg, on_gpu=True)
    assert line.startswith("world 16 | dp 8 | pp 2 | tp 1 | zero 3 | batch 8 micro x 4 accum x 8 dp = 256")
    per_rank = stage_parameters(cfg.model, pp=2, tp=1)
    assert 0.5 * total < per_rank < 0.56 * total
    assert "per rank | model states ~" in line


@pytest.mark.slow
def test_train_refuses_before_any_compute(corpus, tmp_path):  # noqa: F811
    proc = run_training(tmp_path / "run", corpus, "parallel.tp=3", check=False)
    assert proc.returncode != 0
    assert "world size 2 is not divisible by parallel.tp x parallel.pp = 3 x 1" in proc.stdout + proc.stderr
    assert "ds_config: filled" not in proc.stdout + proc.stderr  # no engine was built
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
