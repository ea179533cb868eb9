"""Train a GPT with DeepSpeed.

    deepspeed megagpt/train.py --config configs/demo.yaml train.max_steps=100
    deepspeed --num_gpus 8 megagpt/train.py --config configs/gpt2-medium.yaml parallel.tp=2 parallel.pp=2
    torchrun --nproc_per_node 2 megagpt/train.py --config configs/demo.yaml
    python megagpt/train.py --config configs/demo.yaml          # one process

The loop is nanoGPT's; DeepSpeed owns the optimizer, ZeRO sharding, gradient accumulation and
clipping. The run directory (log.dir) receives the resolved config, metrics.jsonl and TensorBoard
events; checkpoints go to checkpoint.dir.

Before any compute the run checks what it will need: both folders writable, the shard folder's
tokenizer the one its manifest names, the checkpoint to resume from intact (train.resume=auto falls
back to the one before a damaged one) and of this model's shape, and no other run's checkpoints in
checkpoint.dir for a fresh start. A step whose loss or gradient norm is not finite ends the run
before it saves anything (exit 1), or with train.on_nonfinite=skip is skipped and counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a file by a launcher: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import logging
import math
import os
import tempfile
import time
import warnings
from datetime import timedelta
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
import yaml
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.pipe.engine import PipelineEngine

from megagpt import checkpoint, preemption
from megagpt.checkpoint import CheckpointError, DamagedCheckpoint
from megagpt.config import ConfigError, ModelConfig, RunConfig, load_config
from megagpt.data import DataState, MixtureDataset, RankBatches, ShardDataset, open_dataset
from megagpt.deepspeed_config import build_ds_config
from megagpt.evaluate import run_task
from megagpt.flops import accelerator_name, device_peak_flops, mfu, training_flops_per_token
from megagpt.generate import sample
from megagpt.metrics import MetricsWriter
from megagpt.model import GPT, Layers
from megagpt.parallel.launcher import bind_device, fill_rank_env, publish_exit
from megagpt.parallel.pipeline import pipeline_gpt
from megagpt.parallel.tensor import tensor_parallel_layers
from megagpt.parallel.topology import Topology, plan_layout
from megagpt.tokenizer import Tokenizer
from pipelines.shards import ShardError

log = logging.getLogger("megagpt.train")
DIVERGED_EXIT_CODE = 1


class Diverged(RuntimeError):
    """A step's loss or gradient norm was not finite and train.on_nonfinite does not allow skipping it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_args(argv)


def init_distributed(timeout_s: float = 600.0) -> None:
    """Join the process group whichever launcher started us (deepspeed, torchrun, mpirun, srun, none)."""
    fill_rank_env()
    bind_device()  # before DeepSpeed reads LOCAL_RANK as the device index
    # A collective outwaiting this raises instead of hanging: a lost rank ends the run (fault.*).
    timeout = timedelta(seconds=timeout_s)
    # DeepSpeed's grid and ZeRO make their groups with new_group(ranks) and no timeout, which torch
    # fills from these module defaults (30 minutes for gloo), not from the world group's timeout.
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(timeout=timeout)
    if get_accelerator().device_name() == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of every rank spawning one thread per core.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


def lr_lambda(cfg: RunConfig):
    """Linear warmup to train.lr, then cosine decay to train.lr * min_lr_ratio at max_steps."""
    t = cfg.train

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases and LayerNorm gains stay undecayed (as GPT-2 / nanoGPT)."""
    params = list(model.parameters())
    is_matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]  # ZeRO-3 flattens p
    return [
        {"params": [p for p, m in zip(params, is_matrix) if m], "weight_decay": weight_decay},
        {"params": [p for p, m in zip(params, is_matrix) if not m], "weight_decay": 0.0},
    ]


def build_engine(cfg: RunConfig, topo: Topology) -> tuple[deepspeed.DeepSpeedEngine, list[str]]:
    """The model of `cfg` on this rank's share of the layout, inside a DeepSpeed engine."""
    layout = topo.layout
    on_gpu = get_accelerator().device_name() != "cpu"
    ds_config, filled = build_ds_config(cfg.parallel.ds_config, cfg, layout.dp, layout.zero_stage, on_gpu)
    model = build_model(cfg, topo, ds_config)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.train.weight_decay),
        # The engine steps the schedule at each optimizer step and checkpoints it.
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg)),
        config=ds_config,
        mpu=None if layout.pp > 1 else topo.mpu,  # a PipelineModule brings its own grid
    )
    compile_model = cfg.parallel.compile
    if compile_model == "auto":  # where it can help: see plan_layout's refusal for where it cannot
        compile_model = on_gpu and layout.pp == 1 and layout.zero_stage < 3
    if compile_model:
        log.info("compiling the model with torch.compile (parallel.compile=%s)", cfg.parallel.compile)
        engine.compile()  # DeepSpeed's: keeps ZeRO-3's parameter gathering outside the graphs
    return engine, filled


def build_model(cfg: RunConfig, topo: Topology, ds_config: dict[str, Any]) -> torch.nn.Module:
    """This rank's part of the GPT: tp slices of its layers, of its pipeline stage, ZeRO-3 sharded."""
    layout = topo.layout
    layers = tensor_parallel_layers(topo.tp_group) if layout.tp > 1 else Layers()
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and every layout
    if layout.pp > 1:
        return pipeline_gpt(cfg.model, layers, topo.ds_topology, topo.tp_group if layout.tp > 1 else None,
                            layout.activation_checkpoint)
    # With ZeRO-3 each parameter is partitioned as soon as its layer is built: never whole on a
    # rank. Partitioned over dp only: over the world it would overwrite other tp ranks' slices.
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=layout.zero_stage == 3,
                             data_parallel_group=topo.dp_group, mpu=topo.mpu):
        model = GPT(cfg.model, layers)
    model.transformer.checkpoint_blocks = layout.activation_checkpoint
    return model


def train_step(engine: deepspeed.DeepSpeedEngine, batches: RankBatches, grad_accum: int) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns their mean loss (this dp rank's)."""
    if isinstance(engine, PipelineEngine):
        # Every stage draws the micro-batches (only the first and last use them) so that all ranks'
        # data positions agree, whichever of them a checkpoint records.
        micro = [next(batches) for _ in range(grad_accum)]
        return engine.train_batch(iter(micro)).detach()
    total = torch.zeros((), device=engine.device)
    for _ in range(grad_accum):
        x, y = next(batches)
        _, loss = engine(x.to(engine.device), y.to(engine.device), return_logits=False)
        engine.backward(loss)
        engine.step()
        total += loss.detach()
    return total / grad_accum


def evaluate(engine: deepspeed.DeepSpeedEngine, dataset: ShardDataset, cfg: RunConfig,
             topo: Topology) -> float:
    """Mean loss over the first eval.batches global micro-batches of the held-out set (at most all)."""
    batches = RankBatches(dataset, cfg.train.micro_batch_size, topo.dp_rank, topo.layout.dp)
    n = min(cfg.eval.batches, batches.batches_per_epoch)
    device = engine.device
    if isinstance(engine, PipelineEngine):  # the mean of n micro-batches, known on every stage
        micro = [next(batches) for _ in range(n)]
        total = engine.eval_batch(iter(micro), num_micro_batches=n).detach() * n
    else:
        engine.eval()
        total = torch.zeros((), device=device)
        with torch.no_grad():
            for _ in range(n):
                x, y = next(batches)
                total += engine(x.to(device), y.to(device), return_logits=False)[1]
        engine.train()
    dist.all_reduce(total)  # tp and pp ranks hold their dp rank's loss: the world mean is dp's mean
    return total.item() / (n * dist.get_world_size())


def print_samples(engine: deepspeed.DeepSpeedEngine, tokenizer: Tokenizer, cfg: RunConfig,
                  step: int, metrics: MetricsWriter) -> None:
    # Same seed on every rank: under ZeRO-3 all ranks must run the same forwards.
    generator = torch.Generator().manual_seed(cfg.train.seed)
    engine.eval()
    texts = []
    for prompt in cfg.sample.prompts:
        ids = sample(engine.module, tokenizer.encode(prompt), cfg.sample.max_new_tokens,
                     cfg.sample.temperature, cfg.sample.top_k, tokenizer.eos_id, generator, engine.device)
        texts.append(prompt + tokenizer.decode(ids))
    engine.train()
    for text in texts:
        log.info("sample: %s", text.replace("\n", " / "))
    metrics.text(step, "samples", "\n\n---\n\n".join(texts))


def run_eval_tasks(engine: deepspeed.DeepSpeedEngine, tokenizer: Tokenizer, cfg: RunConfig, step: int,
                   metrics: MetricsWriter) -> None:
    """megagpt.evaluate's tasks on the live model. Every rank runs the same examples: under ZeRO-3
    each forward gathers parameters collectively."""
    for task in cfg.eval.tasks:
        name, _, path = task.partition(":")
        results = run_task(engine.module, tokenizer, name, path or None, engine.device,
                           limit=cfg.eval.task_limit or None, progress=False)
        metrics.log(step, "eval", {f"{name}_{k}": float(v) for k, v in results.items()})
        log.info("step %d | %s | %s", step, name, " | ".join(f"{k} {v:.4g}" for k, v in results.items()))


def train(cfg: RunConfig) -> int:
    """Run the loop; returns the exit code (preemption.REQUEUE_EXIT_CODE when stopped by a signal)."""
    stop = preemption.StopRequest()  # before the (long) build and resume: a signal then is not fatal
    layout = plan_layout(cfg, dist.get_world_size())  # refuses an impossible layout before any compute
    on_gpu = get_accelerator().device_name() != "cpu"
    log.info("layout: %s | %s", layout.describe(cfg, on_gpu), get_accelerator().device_name())
    check_writable(cfg)
    train_data = open_dataset(cfg.data.path, cfg.data.mixture, cfg.model.block_size, cfg.train.seed)
    valid_data = None
    if cfg.data.valid_path:
        valid_data = ShardDataset(cfg.data.valid_path, cfg.model.block_size, cfg.train.seed)
    check_data(cfg, train_data, valid_data)
    tokenizer = train_data.load_tokenizer()
    resume_from = resolve_resume(cfg)
    if resume_from is not None:
        check_resumable(cfg, resume_from, train_data)

    topo = Topology(layout)
    engine, filled = build_engine(cfg, topo)
    t = cfg.train
    log.info("ds_config: filled %s", "; ".join(filled))

    state, skipped = DataState(), 0
    if resume_from is not None:
        if checkpoint.saved_layout(resume_from) != layout:
            log.info("resuming under another layout than %s's: each rank reads its new share of the "
                     "weights and Adam state", resume_from.name)
        client = checkpoint.load(engine, topo, resume_from)
        state, skipped = DataState(**client["data"]), client.get("skipped_steps", 0)
        log.info("resumed from %s at step %d (epoch %d, window %d)", resume_from,
                 engine.global_steps, state.epoch, state.window)
    batches = RankBatches(train_data, t.micro_batch_size, topo.dp_rank, layout.dp, state)
    saver = checkpoint.Checkpointer(engine, topo, cfg.checkpoint_dir, cfg.model, tokenizer,
                                    cfg.checkpoint.keep_last, keep=resume_from,
                                    async_save=cfg.checkpoint.async_save)
    try:
        return train_loop(cfg, engine, topo, batches, saver, train_data, valid_data, tokenizer, stop, skipped)
    finally:
        saver.wait()  # a background save in flight is finished (and published) before the run ends


def train_loop(cfg: RunConfig, engine: deepspeed.DeepSpeedEngine, topo: Topology, batches: RankBatches,
               saver: checkpoint.Checkpointer, train_data: ShardDataset | MixtureDataset,
               valid_data: ShardDataset | None, tokenizer: Tokenizer, stop: preemption.StopRequest,
               skipped: int) -> int:
    """Steps until train.max_steps (or a stop signal), logging, evaluating and checkpointing."""
    t, layout, rank, world = cfg.train, topo.layout, dist.get_rank(), dist.get_world_size()
    run_dir = Path(cfg.log.dir)
    global_batch = t.micro_batch_size * t.grad_accum * layout.dp

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metrics = MetricsWriter(run_dir, enabled=rank == 0)
    device = engine.device
    tokens_per_step = global_batch * cfg.model.block_size
    flops_per_token = training_flops_per_token(cfg.model)
    peak = device_peak_flops(accelerator_name())
    loss_sum, steps_in_interval, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    finite_in_interval = 0

    while engine.global_steps < t.max_steps:
        lr = engine.get_lr()[0]  # the rate this step uses; the engine advances it in step()
        loss = train_step(engine, batches, t.grad_accum)
        step = engine.global_steps
        steps_in_interval += 1
        problem = nonfinite(engine, loss)
        if problem is None:
            loss_sum += loss
            finite_in_interval += 1
        else:
            check_skippable(cfg, engine, step, problem)
            skipped += 1
            log.warning("step %d: %s; skipped (train.on_nonfinite=skip): the weights are unchanged, "
                        "%d step(s) skipped in this run", step, problem, skipped)

        if step % cfg.log.interval == 0 or step == t.max_steps:
            dist.all_reduce(loss_sum)
            elapsed = time.perf_counter() - t0
            tokens_per_sec = steps_in_interval * tokens_per_step / elapsed
            values = {
                # the mean over the interval's steps that were not skipped (NaN when all were)
                "loss": loss_sum.item() / (finite_in_interval * world) if finite_in_interval else math.nan,
                "lr": lr,
                "grad_norm": float(engine.get_global_grad_norm() or float("nan")),
                "tokens_per_sec": tokens_per_sec,
                "flops_per_sec_per_device": tokens_per_sec * flops_per_token / world,
            }
            if t.on_nonfinite == "skip":
                values["skipped_steps"] = skipped
            utilisation = mfu(tokens_per_sec, flops_per_token, world, peak)
            if utilisation is not None:
                values["mfu"] = utilisation
            metrics.log(step, "train", values)
            log.info("step %d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.0f tokens/s | %s", step,
                     t.max_steps, values["loss"], values["lr"], values["grad_norm"], tokens_per_sec,
                     f"MFU {utilisation:.1%}" if utilisation is not None
                     else f"{values['flops_per_sec_per_device'] / 1e9:.1f} GFLOP/s a device")
            loss_sum.zero_()
            steps_in_interval, finite_in_interval, t0 = 0, 0, time.perf_counter()

        last = step == t.max_steps
        if valid_data is not None and (last or cfg.eval.interval and step % cfg.eval.interval == 0):
            eval_loss = evaluate(engine, valid_data, cfg, topo)
            metrics.log(step, "eval", {"loss": eval_loss, "ppl": math.exp(eval_loss)})
            log.info("step %d | eval loss %.4f | eval ppl %.2f", step, eval_loss, math.exp(eval_loss))
        if cfg.eval.tasks and (last or cfg.eval.interval and step % cfg.eval.interval == 0):
            run_eval_tasks(engine, tokenizer, cfg, step, metrics)
        stopping = not last and stop.agreed(device)
        if stopping:
            stop.ignore_more()
        if last or stopping or cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
            client = {"data": batches.state.to_dict(), "tokenizer_sha256": train_data.tokenizer_sha256,
                      "skipped_steps": skipped}
            path = saver.save(step, client)
            log.info("checkpoint %s%s", path, " being written in the background" if saver.async_save else "")
        if stopping:
            saver.wait()  # requeued only once the checkpoint is published
            log.warning("stopped by %s after step %d; exiting with %d to be requeued",
                        stop.received or "a signal on another rank", step, preemption.REQUEUE_EXIT_CODE)
            metrics.close()
            return preemption.REQUEUE_EXIT_CODE
        if last and cfg.sample.prompts and cfg.sample.max_new_tokens:
            if layout.pp == 1:
                print_samples(engine, tokenizer, cfg, step, metrics)
            else:
                log.info("samples skipped: generation needs the whole model, and pp=%d splits it", layout.pp)
    metrics.close()
    return 0


def check_data(cfg: RunConfig, train_data: ShardDataset, valid_data: ShardDataset | None) -> None:
    if train_data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{train_data.vocab_size} ({cfg.data.path}/manifest.json): set "
            f"model.vocab_size={train_data.vocab_size}"
        )
    if valid_data is not None and valid_data.tokenizer_sha256 != train_data.tokenizer_sha256:
        raise ConfigError(
            f"data.valid_path={cfg.data.valid_path} was tokenized with another tokenizer than "
            f"data.path={cfg.data.path}; build both with the same tokenizer"
        )


def check_writable(cfg: RunConfig) -> None:
    """Refuse a log.dir or checkpoint.dir that cannot be written, before any compute rather than at
    the first save. Collective: a failure on any rank is raised on all, none is left waiting."""
    problems = []
    for key, folder in (("log.dir", Path(cfg.log.dir)), ("checkpoint.dir", cfg.checkpoint_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as e:
            problems.append(f"{key}={folder} is not writable ({e.strerror or e}): choose a folder you "
                            "can write to, or fix its permissions")
    shares: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, problems)
    problems = list(dict.fromkeys(p for share in shares for p in share))  # once, not once a rank
    if problems:
        raise ConfigError("; ".join(problems))


def resolve_resume(cfg: RunConfig) -> Path | None:
    """The intact checkpoint to resume from (None to start afresh), or an error saying why not."""
    mode, folder = cfg.train.resume, cfg.checkpoint_dir
    if mode == "auto":
        path = checkpoint.latest(folder)
    elif mode == "never":
        path = None
    else:
        path = Path(mode)
        if not path.is_dir():
            raise ConfigError(f"train.resume={mode}: no such checkpoint folder (or use 'auto' / 'never')")
    found = checkpoint.published(folder)
    if found and (path is None or path.resolve().parent != folder.resolve()):
        # Its checkpoints would interleave with this run's, and keep_last, pruning by step number,
        # would delete whichever run's are older.
        resume = (f"write the name of the one to continue from into {folder / checkpoint.LATEST}"
                  if mode == "auto" else "continue that run with train.resume=auto")
        raise ConfigError(
            f"checkpoint.dir={folder} already holds another run's checkpoints ({found[0].name} to "
            f"{found[-1].name}); train.resume={mode} would mix this run's with them: {resume}, or start "
            "this one in a new log.dir (or checkpoint.dir)"
        )
    return path if path is None else verified(path, fallback=mode == "auto")


def verified(path: Path, fallback: bool) -> Path:
    """`path` if all its files match their checksums, else (with `fallback`) the newest earlier
    checkpoint that does, with a warning."""
    while True:
        try:
            checkpoint.verify(path, rank=dist.get_rank(), world=dist.get_world_size())
            return path
        except DamagedCheckpoint as e:
            before = checkpoint.previous(path)
            if not fallback or before is None:
                raise
            log.warning("%s. Falling back to %s (train.resume=auto)", e, before)
            path = before


def check_resumable(cfg: RunConfig, path: Path, train_data: ShardDataset | MixtureDataset) -> None:
    """Refuse a checkpoint of another model shape or tokenizer than this run's, naming both."""
    saved = checkpoint.read_model_config(path)
    # Dropout changes no tensor, so it may differ; every other field shapes the weights.
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name != "dropout" and getattr(saved, f.name) != getattr(cfg.model, f.name)]
    if differ:
        raise ConfigError(
            f"{path} was saved with {', '.join(f'model.{k}={getattr(saved, k)}' for k in differ)} but "
            f"this run has {', '.join(f'model.{k}={getattr(cfg.model, k)}' for k in differ)}: resume "
            "with the checkpoint's model settings, or start a new run in another log.dir"
        )
    saved_tokenizer = checkpoint.find_tokenizer(path)
    if saved_tokenizer.sha256 != train_data.tokenizer_sha256:
        raise ConfigError(
            f"{path} was trained with another tokenizer ({saved_tokenizer.path}) than {cfg.data.path} "
            "was built with: resume on the data it was trained on, or start a new run in another log.dir"
        )


def nonfinite(engine: deepspeed.DeepSpeedEngine, loss: torch.Tensor) -> str | None:
    """What was not finite in the step just taken, the same on every rank; None when all was."""
    total = loss.detach().clone()
    dist.all_reduce(total)  # a NaN or inf on any rank reaches all
    norm = engine.get_global_grad_norm()  # already global
    problems = []
    if not math.isfinite(total.item()):
        problems.append(f"loss {total.item() / dist.get_world_size()}")
    if norm is not None and not math.isfinite(float(norm)):
        problems.append(f"grad norm {float(norm)}")
    if not problems and not engine.was_step_applied():  # DeepSpeed's own overflow check skipped it
        problems.append("gradients not finite")
    return " and ".join(problems) or None


def check_skippable(cfg: RunConfig, engine: deepspeed.DeepSpeedEngine, step: int, problem: str) -> None:
    """Raise Diverged unless the non-finite step can be skipped. DeepSpeed's ZeRO optimizers refuse
    to apply an update whose gradient norm is not finite (they zero the gradients, leave the lr
    schedule and weights as they were, count engine.skipped_steps): skipping is keeping that."""
    t = cfg.train
    if t.on_nonfinite == "skip" and not engine.was_step_applied():
        return
    if t.on_nonfinite == "skip":
        why, skip = "DeepSpeed applied its update (its gradients were finite), so it cannot be skipped", ""
    else:
        why, skip = "training diverged", ", or set train.on_nonfinite=skip to skip such steps"
    raise Diverged(
        f"step {step}: {problem}: {why}. The run stops without saving this step; the checkpoints in "
        f"{cfg.checkpoint_dir} are as they were. Lower train.lr (now {t.lr}) or raise train.warmup_steps "
        f"and resume{skip}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"megagpt: config error: {e}", file=sys.stderr)
        return 2
    init_distributed(cfg.fault.collective_timeout_s)
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    deepspeed.utils.logger.setLevel(logging.WARNING)  # its per-step and config dumps drown ours
    # DeepSpeed 0.19 calls collectives torch 2.13 deprecated; the warning repeats every step.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated")
    # These are raised on every rank alike (the same config and files, or decided collectively).
    try:
        code = train(cfg)
    except ConfigError as e:
        log.error("config error: %s", e)
        code = 2
    except (CheckpointError, ShardError) as e:
        log.error("%s", e)
        code = 2
    except Diverged as e:
        log.error("%s", e)
        code = DIVERGED_EXIT_CODE
    else:
        dist.barrier()  # every rank got past its last save: the code stands for the whole run
    if rank == 0:
        publish_exit(code)  # what the SLURM script requeues on (75), or not
    # Leaving without this has crashed at exit ("terminate called without an active exception").
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
