"""Run configs: presets, YAML, dotted overrides, and refusals that name the key."""

import json
from pathlib import Path

import pytest

from megagpt.config import GPT3_RECIPES, ConfigError, ModelConfig, load_config
from megagpt.sizing.parameters import stage_parameters
from megagpt.training.deepspeed_config import build_ds_config

ROOT = Path(__file__).resolve().parents[1]


def test_presets_have_the_papers_shapes():
    xl = ModelConfig.preset("gpt2-xl")
    shape = (xl.n_layer, xl.n_head, xl.n_embd, xl.block_size, xl.vocab_size)
    assert shape == (48, 25, 1600, 1024, 50257)
    gpt1 = ModelConfig.preset("gpt1")
    assert (gpt1.arch, gpt1.block_size, gpt1.n_layer, gpt1.n_embd) == ("gpt1", 512, 12, 768)
    assert ModelConfig.preset("gpt2-medium").n_layer == 24


@pytest.mark.parametrize("name, paper", [("gpt3-small", 125e6), ("gpt3-medium", 350e6), ("gpt3-large", 760e6),
                                         ("gpt3-xl", 1.3e9), ("gpt3-2.7b", 2.7e9), ("gpt3-6.7b", 6.7e9),
                                         ("gpt3-13b", 13.0e9), ("gpt3-175b", 175.0e9)])
def test_gpt3_presets_have_table_2_1_sizes(name, paper):
    config = ModelConfig.preset(name)
    assert (config.block_size, config.attention) == (2048, "gpt3_sparse")
    assert stage_parameters(config) == pytest.approx(paper, rel=0.025)
    assert name in GPT3_RECIPES


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_yaml_preset_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  preset: gpt2-medium\n  dropout: 0.0\n"
                 "train:\n  max_steps: 10\n  warmup_steps: 5\n")
    cfg = load_config(f, ["train.max_steps=50", "train.lr=3e-4", "model.n_layer=2",
                          "sample.prompts=[a, b]"])
    assert cfg.model.n_embd == 1024 and cfg.model.n_layer == 2 and cfg.model.dropout == 0.0
    assert cfg.train.max_steps == 50 and cfg.train.lr == 3e-4
    assert cfg.sample.prompts == ["a", "b"]


@pytest.mark.parametrize(("override", "message"), [
    ("train.max_step=5", "unknown key 'train.max_step'.*did you mean train.max_steps"),
    ("trian.lr=1", "unknown key 'trian'"),
    ("train.max_steps=ten", "train.max_steps='ten'.*expected int"),
    ("train.micro_batch_size=0", "train.micro_batch_size must be positive"),
    ("model.n_head=5", "model.n_embd=768 is not divisible by model.n_head=5"),
    ("model.arch=gpt3", "model.arch='gpt3'.*choose one of"),
    ("model.preset=gpt5", "unknown model preset 'gpt5'"),
    ("train.warmup_steps=2000", "train.warmup_steps=2000 must lie in"),
    ("max_steps=3", "not of the form section.key=value"),
    ("train.weight_decay=-0.1", r"train.weight_decay must be 0 or positive, got -0.1"),
    ("data.mixture=[data/a=nan]", r"data.mixture entry 'data/a=nan': the weight must be a positive number, "
                                   "got nan"),
    ("data.mixture=[data/a=1,data/b=-2]", r"data.mixture entry 'data/b=-2': the weight must be a positive"),
    ("data.mixture=[data/a=0]", r"data.mixture entry 'data/a=0': the weight must be a positive number"),
    ("data.mixture=[data/a=inf]", r"data.mixture entry 'data/a=inf': the weight must be a positive number"),
    ("data.mixture=[data/a]", r"data.mixture entry 'data/a': expected FOLDER=WEIGHT"),
])
def test_bad_keys_and_values_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_ds_config_auto_values_are_filled_from_the_run():
    cfg = load_config(None, ["train.micro_batch_size=4", "train.grad_accum=3", "train.lr=1e-3"])
    ds, filled = build_ds_config(ROOT / "ds_config.json", cfg, dp_size=2, zero_stage=3, on_gpu=False)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 3
    assert ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is False
    assert any(line.startswith("train_batch_size=24") for line in filled)


def test_ds_config_fixed_value_that_disagrees_is_refused(tmp_path):
    ds = json.loads((ROOT / "ds_config.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = 16
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    cfg = load_config(None, ["train.micro_batch_size=4", f"parallel.ds_config={path}"])
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=16.*train.micro_batch_size"):
        build_ds_config(path, cfg, dp_size=1, zero_stage=3, on_gpu=False)


@pytest.mark.parametrize("precision, on_gpu, bf16", [("auto", True, True), ("auto", False, False),
                                                     ("fp32", True, False), ("bf16", True, True)])
def test_precision_fills_bf16(precision, on_gpu, bf16):
    cfg = load_config(None, [f"train.precision={precision}"])
    ds, _ = build_ds_config(ROOT / "ds_config.json", cfg, dp_size=1, zero_stage=1, on_gpu=on_gpu)
    assert ds["bf16"]["enabled"] is bf16


def test_bf16_on_a_cpu_is_refused():
    cfg = load_config(None, ["train.precision=bf16"])
    with pytest.raises(ConfigError, match="train.precision=bf16 on a CPU.*train.precision=auto"):
        build_ds_config(ROOT / "ds_config.json", cfg, dp_size=1, zero_stage=1, on_gpu=False)
