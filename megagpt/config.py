"""Model presets and the run configuration: YAML files plus dotted `key=value` overrides.

Every section is a dataclass, so a key that does not exist or a value of the wrong type is refused
before anything starts, with a message that names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT. `arch` picks GPT-1 (post-LN) or GPT-2 (pre-LN, final LayerNorm, scaled init)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    block_size: int = 1024
    dropout: float = 0.1
    arch: Literal["gpt1", "gpt2"] = "gpt2"
    bias: bool = True
    # The embedding and LM head get rows up to a multiple of this (GPT-2's 50257 -> 50304): matmul
    # widths GPU kernels tile well, and a vocabulary tensor parallelism can split. The extra rows
    # are never an input, and their logits are -inf: they take no probability in loss or sampling.
    vocab_pad_multiple: int = 128
    # GPT-3 (Brown et al. 2020, section 2.1) alternates dense and locally banded attention layers.
    # "dense": every layer attends to all earlier positions. "gpt3_sparse": even layers dense, odd
    # layers "local" (each position sees the last local_window positions, itself included).
    # "per_layer": attention_layers names each layer's kind, "dense" or "local".
    attention: Literal["dense", "gpt3_sparse", "per_layer"] = "dense"
    local_window: int = 0  # band width of the local layers; 0 when there are none
    attention_layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "vocab_pad_multiple"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "pick n_head dividing n_embd (GPT-2 uses a head size of 64)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.arch not in ("gpt1", "gpt2"):
            raise ConfigError(f"model.arch must be 'gpt1' or 'gpt2', got {self.arch!r}")
        self._check_attention()

    def _check_attention(self) -> None:
        if self.attention not in ATTENTION_PATTERNS:
            raise ConfigError(f"model.attention must be one of {ATTENTION_PATTERNS}, got {self.attention!r}")
        if self.attention == "per_layer":
            if len(self.attention_layers) != self.n_layer:
                raise ConfigError(
                    f"model.attention_layers names {len(self.attention_layers)} layers but model.n_layer="
                    f"{self.n_layer}: give one kind ('dense' or 'local') for each layer"
                )
            for i, kind in enumerate(self.attention_layers):
                if kind not in LAYER_ATTENTION:
                    raise ConfigError(f"model.attention_layers[{i}]={kind!r}: use 'dense' or 'local'")
        elif self.attention_layers:
            raise ConfigError(
                f"model.attention_layers is given but model.attention={self.attention!r} ignores it: "
                "set model.attention=per_layer to use it, or drop model.attention_layers"
            )
        has_local = "local" in self.layer_attention
        if has_local and self.local_window <= 0:
            raise ConfigError(
                f"model.attention={self.attention!r} has local layers but model.local_window="
                f"{self.local_window}: set the band width, e.g. model.local_window=256"
            )
        if not has_local and self.local_window != 0:
            raise ConfigError(
                f"model.local_window={self.local_window} has no effect: model.attention="
                f"{self.attention!r} has no local layers; set model.attention=gpt3_sparse "
                "(or per_layer with 'local' layers), or drop model.local_window"
            )

    @property
    def layer_attention(self) -> list[str]:
        """Each layer's attention, first layer first: "dense" or "local" (banded)."""
        if self.attention == "per_layer":
            return list(self.attention_layers)
        if self.attention == "gpt3_sparse":
            return ["dense" if i % 2 == 0 else "local" for i in range(self.n_layer)]
        return ["dense"] * self.n_layer

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to vocab_pad_multiple."""
        return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple

    @property
    def residual_init_std(self) -> float:
        """GPT-2 scales residual projections by 1/sqrt(2 * n_layer); GPT-1 used 0.02 throughout."""
        return 0.02 / math.sqrt(2 * self.n_layer) if self.arch == "gpt2" else 0.02

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
        return cls(**{**MODEL_PRESETS[name], **overrides})


ATTENTION_PATTERNS = ("dense", "gpt3_sparse", "per_layer")
LAYER_ATTENTION = ("dense", "local")

_GPT2 = dict(arch="gpt2", vocab_size=50257, block_size=1024, dropout=0.1)
_GPT3 = dict(_GPT2, block_size=2048, attention="gpt3_sparse", local_window=256)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Radford et al. 2018: 12 layers, 768 wide, 12 heads, 512 context, 40,478 BPE merges + specials.
    "gpt1": dict(arch="gpt1", n_layer=12, n_head=12, n_embd=768, vocab_size=40478, block_size=512),
    # Radford et al. 2019, Table 2 (the 117M model is 124M once the embeddings are counted).
    "gpt2-small": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # Brown et al. 2020, Table 2.1: context 2048, GPT-2's vocabulary, alternating dense and locally
    # banded attention (the paper gives no band width: 256, an eighth of the context, is megagpt's).
    # Two rows of the table do not multiply out: XL's 24 heads of 128 are not its d_model 2048 (16
    # heads of 128 here, as Megatron-LM's 1.3B), and 13B's d_model 5140 is not 40 x 128 (5120 here).
    "gpt3-small": dict(_GPT3, n_layer=12, n_head=12, n_embd=768),
    "gpt3-medium": dict(_GPT3, n_layer=24, n_head=16, n_embd=1024),
    "gpt3-large": dict(_GPT3, n_layer=24, n_head=16, n_embd=1536),
    "gpt3-xl": dict(_GPT3, n_layer=24, n_head=16, n_embd=2048),
    "gpt3-2.7b": dict(_GPT3, n_layer=32, n_head=32, n_embd=2560),
    "gpt3-6.7b": dict(_GPT3, n_layer=32, n_head=32, n_embd=4096),
    "gpt3-13b": dict(_GPT3, n_layer=40, n_head=40, n_embd=5120),
    "gpt3-175b": dict(_GPT3, n_layer=96, n_head=96, n_embd=12288),
    # Test sizes: same code paths, seconds on a CPU.
    "gpt2-tiny": dict(_GPT2, n_layer=2, n_head=4, n_embd=64, vocab_size=512, block_size=64, dropout=0.0),
    "gpt1-tiny": dict(
        arch="gpt1", n_layer=2, n_head=4, n_embd=64, vocab_size=512, block_size=64, dropout=0.0
    ),
}

# Brown et al. 2020, Table 2.1: each GPT-3 size's batch (sequences of 2048 tokens: 0.5M, 1M, 2M and
# 3.2M tokens) and peak learning rate.
GPT3_RECIPES: dict[str, tuple[int, float]] = {
    "gpt3-small": (256, 6.0e-4), "gpt3-medium": (256, 3.0e-4), "gpt3-large": (256, 2.5e-4),
    "gpt3-xl": (512, 2.0e-4), "gpt3-2.7b": (512, 1.6e-4), "gpt3-6.7b": (1024, 1.2e-4),
    "gpt3-13b": (1024, 1.0e-4), "gpt3-175b": (1536, 0.6e-4),
}


@dataclass
class DataConfig:
    path: str = "data/shards"  # training shard folder (with manifest.json)
    valid_path: str = "data/shards/valid"  # held-out shard folder; "" turns evaluation off
    # FOLDER=WEIGHT entries: train on these corpora mixed by weight instead of `path`
    mixture: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    max_steps: int = 1000
    seed: int = 1234
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    grad_accum: int = 1
    resume: str = "auto"  # "auto": latest checkpoint in checkpoint.dir if any; "never"; or a path
    # A step whose loss or gradient norm is not finite: "stop" ends the run before anything is saved;
    # "skip" leaves the weights as they were (DeepSpeed does not apply the update) and counts it;
    # "rewind" goes back to the newest checkpoint whose loss was finite and on past the batches since
    # (at most 3 times a run; megagpt.training.divergence).
    on_nonfinite: Literal["stop", "skip", "rewind"] = "stop"
    # auto: bf16 mixed precision on a GPU (bf16 weights and activations, fp32 master weights and
    # Adam), fp32 on a CPU; fp32 on a GPU too for a reference curve or to rule precision out.
    precision: Literal["auto", "bf16", "fp32"] = "auto"


@dataclass
class ParallelConfig:
    """world = dp x pp x tp; dp is what is left of the world once tp and pp are taken."""

    tp: int = 1  # tensor parallel: attention heads, MLP columns and the vocabulary split over tp ranks
    pp: int = 1  # pipeline stages (megagpt.parallel.stage_pipeline: a DeepSpeed engine each, 1F1B)
    # auto: on GPUs the stage megagpt.sizing.planner estimates fastest within their memory; 3 on a CPU.
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    activation_checkpoint: int = 0  # recompute activations in chunks of N blocks (1: every block); 0 off
    # torch.compile the model through DeepSpeed's engine.compile (pp = 1, ZeRO-0/1/2). auto: on a
    # GPU, off on a CPU (there compiled blocks measured 0.93x eager, after a 20 s compile).
    compile: Literal["auto", True, False] = "auto"
    ds_config: str = "ds_config.json"
    # ZeRO-Offload / ZeRO-Infinity (docs/offload.md): where the fp32 optimizer state (and its step)
    # and the parameters live when the devices cannot hold them: host memory (cpu) or files (nvme).
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    # the nvme folder; "": node-local scratch ($SLURM_TMPDIR, else $TMPDIR)/megagpt-offload, or
    # <log.dir>/offload where neither is set
    offload_path: str = ""


@dataclass
class LogConfig:
    dir: str = "runs/default"  # run directory: resolved config, metrics.jsonl, TensorBoard events
    interval: int = 10


@dataclass
class CheckpointConfig:
    dir: str = ""  # "" means <log.dir>/checkpoints
    interval: int = 0  # steps between checkpoints; 0 saves only at the end (and on SIGTERM / SIGUSR1)
    keep_last: int = 3  # published checkpoints kept (the one resumed from too); 0 keeps all
    # Copy the state to host memory and write it from a background thread while training goes on;
    # `latest` moves once every rank has written its part. Costs a host copy of the rank's share.
    async_save: bool = False


@dataclass
class FaultConfig:
    # A collective that waits longer than this ends the run with an error instead of a silent hang
    # (a rank that died without closing its connections, or hangs). Above the slowest checkpoint save.
    collective_timeout_s: float = 600.0


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: [low, high], or (low, ...) with low_open; NaN never."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    why: str = ""  # appended to the refusal: what the bounds mean

    def holds(self, value: float) -> bool:
        return (self.low < value if self.low_open else self.low <= value) and value <= self.high

    def __str__(self) -> str:
        if self.high == math.inf:
            return "positive" if self.low == 0 and self.low_open else "0 or positive"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


POSITIVE = Range(0, low_open=True)
NOT_NEGATIVE = Range(0)
# Every numeric key of the run config and the values it may take, checked in one place before any
# compute (a NaN fails every range).
RANGES: dict[str, Range] = {
    "model.dropout": Range(0, 1, why=" (a probability)"),
    "train.max_steps": POSITIVE,
    "train.seed": NOT_NEGATIVE,
    "train.lr": POSITIVE,
    "train.min_lr_ratio": Range(0, 1, why=" (the cosine ends at lr x min_lr_ratio: above 1 the lr rises)"),
    "train.warmup_steps": NOT_NEGATIVE,
    "train.weight_decay": NOT_NEGATIVE,
    "train.grad_clip": Range(0, why=" (the largest gradient norm kept; 0 turns clipping off)"),
    "train.micro_batch_size": POSITIVE,
    "train.grad_accum": POSITIVE,
    "parallel.tp": POSITIVE,
    "parallel.pp": POSITIVE,
    "parallel.activation_checkpoint": Range(0, why=" (blocks per recomputed chunk; 0 off)"),
    "log.interval": POSITIVE,
    "checkpoint.interval": Range(0, why=" (steps between checkpoints; 0 saves only at the end)"),
    "checkpoint.keep_last": Range(0, why=" (0 keeps all)"),
    "fault.collective_timeout_s": POSITIVE,
    "eval.interval": Range(0, why=" (steps between evaluations; 0 only at the end)"),
    "eval.batches": POSITIVE,
    "eval.task_limit": Range(0, why=" (0: all)"),
    "sample.max_new_tokens": Range(0, why=" (0 turns sampling off)"),
    "sample.temperature": Range(0, why=" (0 is greedy)"),
    "sample.top_k": Range(0, why=" (0: no limit)"),
}


def mixture_weights(mixture: list[str]) -> list[tuple[str, float]]:
    """data.mixture's FOLDER=WEIGHT entries as (folder, weight); a weight must be a positive number
    (NaN, infinity, 0 and negatives would make the sampling probabilities meaningless)."""
    pairs = []
    for entry in mixture:
        folder, sep, text = str(entry).rpartition("=")
        try:
            weight = float(text)
        except ValueError:
            sep = ""
        if not sep or not folder:
            raise ConfigError(f"data.mixture entry {entry!r}: expected FOLDER=WEIGHT, e.g. data/books=2.0")
        if not (0 < weight < math.inf):
            raise ConfigError(f"data.mixture entry {entry!r}: the weight must be a positive number, got "
                              f"{text} (a corpus's share is its weight over the sum of all weights)")
        pairs.append((folder, weight))
    return pairs


EVAL_TASKS = ("wikitext2", "lambada", "choice")  # megagpt.tasks.evaluate's tasks
# The bundled test sets a task reads when eval.tasks names no file (choice has none).
EVAL_DATA = Path(__file__).resolve().parents[1] / "data" / "eval"
EVAL_DEFAULT_FILES = {
    "wikitext2": EVAL_DATA / "wikitext-2-raw" / "wiki.test.raw",
    "lambada": EVAL_DATA / "lambada" / "lambada_test.jsonl",
}


@dataclass
class EvalConfig:
    interval: int = 0  # steps between evaluations; 0 evaluates only at the end
    batches: int = 8  # micro-batches per rank per evaluation
    # megagpt.tasks.evaluate tasks run at each evaluation: "lambada", "wikitext2", or "NAME:FILE"
    tasks: list[str] = field(default_factory=list)
    task_limit: int = 200  # first examples (lambada, choice) or lines (wikitext2) of each task; 0: all


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=lambda: ["The"])
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 40


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        for key, allowed in RANGES.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if not allowed.holds(value):
                raise ConfigError(f"{key} must be {allowed}, got {value}{allowed.why}")
        if not self.train.warmup_steps <= self.train.max_steps:
            raise ConfigError(
                f"train.warmup_steps={self.train.warmup_steps} must lie in [0, train.max_steps="
                f"{self.train.max_steps}]"
            )
        mixture_weights(self.data.mixture)  # refuses a bad entry before any compute
        for task in self.eval.tasks:
            name, _, path = task.partition(":")
            if name not in EVAL_TASKS or name == "choice" and not path:
                raise ConfigError(f"eval.tasks entry {task!r}: use one of {', '.join(EVAL_TASKS)}, "
                                  "optionally NAME:FILE (choice needs its JSONL file)")
        _check_offload(self.parallel)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.log.dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML preset (or start from defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; the presets are in configs/")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}; fix the file there") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        try:
            raw[section][name] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r} is not a valid YAML value: {_yaml_problem(e)}; "
                              "quote it if it is a string") from None
    where = " + ".join(([str(path)] if path else []) + (["command-line overrides"] if overrides else []))
    return _build(RunConfig, raw, where=where or "defaults")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line: where it gave up and, as an unclosed bracket is found only at
    the end of the file, where what it was reading began (lines and columns 1-based)."""
    problem = getattr(error, "problem", None) or str(error).replace("\n", " ")
    mark, context, start = (getattr(error, key, None) for key in ("problem_mark", "context", "context_mark"))
    if mark:
        problem += f" at line {mark.line + 1}, column {mark.column + 1}"
    if context and start:
        problem += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    return problem


def _build(cls: type, raw: dict[str, Any], where: str, prefix: str = "") -> Any:
    """Construct dataclass `cls` from `raw`, refusing unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    if cls is ModelConfig and "preset" in raw:
        raw = dict(raw)
        name = raw.pop("preset")
        base = ModelConfig.preset(name)
        kwargs = dataclasses.asdict(base)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            suggestion = f"; did you mean {prefix}{hint[0]}?" if hint else f"; known: {', '.join(names)}"
            raise ConfigError(f"unknown key {dotted!r} in {where}{suggestion}")
        kwargs[key] = _coerce(hints[key], value, dotted, where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {where})") from None


def _coerce(hint: Any, value: Any, key: str, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} in {where} must be a mapping of its keys")
        return _build(hint, value, where, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r} in {where}: choose one of {typing.get_args(hint)}")
        return value
    if origin in (list, types.GenericAlias) or hint is list:
        (item_type,) = typing.get_args(hint) or (Any,)
        return [_coerce(item_type, v, key, where) for v in (value if isinstance(value, list) else [value])]
    if hint is float and not isinstance(value, bool) and (number := _number(value)) is not None:
        # float() also reads "nan" and "inf", which no setting means and which fail late, in torch.
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} in {where} is not a finite number; give a real value")
        return number
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is Any or isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{key}={value!r} in {where} has the wrong type: expected {hint.__name__}, "
        f"got {type(value).__name__}"
    )


def _number(value: Any) -> float | None:
    """`value` as a float, or None; YAML reads 3e-4 (no dot) as a string."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def uses_bf16(precision: str, on_gpu: bool) -> bool:
    """Whether a run of train.precision=`precision` trains in bf16 mixed precision here."""
    if precision == "bf16" and not on_gpu:
        raise ConfigError("train.precision=bf16 on a CPU: megagpt trains in bf16 on GPUs only; use "
                          "train.precision=auto (fp32 here) or fp32")
    return precision == "bf16" or precision == "auto" and on_gpu


def _check_offload(p: ParallelConfig) -> None:
    asked = {f"parallel.{key}": getattr(p, key) for key in ("offload_optimizer", "offload_params")
             if getattr(p, key) != "none"}
    if not asked:
        return
    what = ", ".join(f"{k}={v}" for k, v in asked.items())
    if p.zero_stage not in ("auto", 3):
        raise ConfigError(f"{what} with parallel.zero_stage={p.zero_stage}: megagpt offloads with ZeRO-3 "
                          "(the stage that partitions and streams parameters); set parallel.zero_stage=3 "
                          "or auto")
    if p.pp > 1:
        raise ConfigError(
            f"{what} with parallel.pp={p.pp}: offload is not supported inside megagpt's pipeline stages "
            "(its 1F1B schedule runs the next micro-batch's forward before the last one's backward, so "
            "a stage would swap the same parameters in and out of memory or disk twice a step, and that "
            "path is untested); offload exists to fit a model on fewer devices: use parallel.pp=1 with "
            "dp x tp"
        )
