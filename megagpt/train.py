"""Train a GPT with DeepSpeed.

    deepspeed megagpt/train.py --config configs/demo.yaml train.max_steps=100
    deepspeed --num_gpus 8 megagpt/train.py --config configs/gpt2-medium.yaml parallel.tp=2 parallel.pp=2
    torchrun --nproc_per_node 2 megagpt/train.py --config configs/demo.yaml
    python megagpt/train.py --config configs/demo.yaml          # one process

The loop is nanoGPT's; DeepSpeed owns the optimizer, ZeRO sharding, gradient accumulation and
clipping (megagpt.training.engine builds it). The run directory (log.dir) receives the resolved config,
metrics.jsonl and TensorBoard events; checkpoints go to checkpoint.dir.

Before any compute the run checks what it will need (megagpt.training.preflight). A step whose loss or
gradient norm is not finite ends the run before it saves anything (exit 1), naming the newest
checkpoint whose loss was sane; with train.on_nonfinite=skip it is skipped and counted; with
rewind the run goes back to that checkpoint and on past the batches that led to the spike
(megagpt.training.divergence). Each log line reports the interval's mean loss, the
training rate (tokens/s, FLOP/s, MFU on a known GPU) timed over the training steps alone (not the
evaluation, checkpoints and samples between them), and the peak memory of the busiest rank (GPU:
allocated; CPU: resident), each rank's in TensorBoard.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a file by a launcher: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import math
import resource
import time
import warnings
from dataclasses import dataclass, field

import deepspeed
import torch
import torch.distributed as dist
import yaml
from deepspeed.accelerator import get_accelerator

from megagpt import checkpoint
from megagpt.checkpoint import CheckpointError
from megagpt.config import ConfigError, RunConfig, load_config
from megagpt.formats.shards import ShardError
from megagpt.formats.tokenizer import Tokenizer
from megagpt.parallel.launcher import publish_exit
from megagpt.parallel.topology import Topology
from megagpt.sizing.flops import accelerator_name, device_peak_flops, mfu, training_flops_per_token
from megagpt.sizing.layout_rules import describe_layout
from megagpt.tasks.evaluate import run_task
from megagpt.tasks.generate import sample
from megagpt.training import preemption
from megagpt.training.data import DataState, MixtureDataset, RankBatches, ShardDataset, open_dataset
from megagpt.training.divergence import (
    MAX_REWINDS,
    Diverged,
    check_skippable,
    diverged_message,
    last_sane_checkpoint,
    nonfinite,
)
from megagpt.training.engine import build_engine, init_distributed, leave_distributed, on_cpu, run_layout
from megagpt.training.metrics import MetricsWriter
from megagpt.training.preflight import (
    check_data,
    check_eval_tasks,
    check_offload,
    check_resumable,
    check_writable,
    resolve_resume,
)

log = logging.getLogger("megagpt.train")
DIVERGED_EXIT_CODE = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_args(argv)


def train_step(engine: deepspeed.DeepSpeedEngine, batches: RankBatches, grad_accum: int,
               pipelined: bool) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns their mean loss (this dp rank's)."""
    if pipelined:
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
    if topo.layout.pp > 1:  # the mean of n micro-batches, known on every stage
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


def peak_memory_gib() -> float:
    """This rank's peak memory so far: allocated device memory on a GPU, resident memory on a CPU."""
    if on_cpu():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return get_accelerator().max_memory_allocated() / 2**30


def due(step: int, every: int) -> bool:
    """Whether a task done every `every` steps (0: never) falls on `step`."""
    return every > 0 and step % every == 0


@dataclass
class Interval:
    """The steps since the last log line: their summed losses (the finite ones) and the seconds
    spent in them alone, so that evaluation and checkpoints between log lines do not count as
    training time."""

    loss_sum: torch.Tensor
    steps: int = 0
    finite: int = 0
    seconds: float = 0.0
    lr: float = math.nan  # the rate the interval's last step used

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.steps, self.finite, self.seconds = 0, 0, 0.0


@dataclass
class Trainer:
    """The loop, and the side tasks around it (logging, evaluation, checkpoints, preemption,
    samples), each a small named step."""

    cfg: RunConfig
    engine: deepspeed.DeepSpeedEngine
    topo: Topology
    batches: RankBatches
    saver: checkpoint.Checkpointer
    train_data: ShardDataset | MixtureDataset
    valid_data: ShardDataset | None
    tokenizer: Tokenizer
    stop: preemption.StopRequest
    skipped: int = 0
    rewinds: int = 0  # train.on_nonfinite=rewind: times this run went back to a sane checkpoint
    step_loss: float = math.nan  # the last step's mean loss over the world, what a checkpoint records
    metrics: MetricsWriter = field(init=False)
    interval: Interval = field(init=False)
    flops_per_token: float = field(init=False)
    peak_flops: float | None = field(init=False)  # the device's, None on a CPU or an unknown GPU

    def __post_init__(self) -> None:
        run_dir, rank = Path(self.cfg.log.dir), dist.get_rank()
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.metrics = MetricsWriter(run_dir, enabled=rank == 0)
        self.interval = Interval(torch.zeros((), device=self.engine.device))
        self.flops_per_token = training_flops_per_token(self.cfg.model)
        self.peak_flops = device_peak_flops(accelerator_name())

    def run(self) -> int:
        """Steps until train.max_steps, or until a stop signal (returns the requeue exit code)."""
        t = self.cfg.train
        try:
            while self.engine.global_steps < t.max_steps:
                step = self.step()
                if step is None:  # rewound to an earlier checkpoint
                    continue
                last = step == t.max_steps
                if last or due(step, self.cfg.log.interval):
                    self.log_interval(step)
                stopping = not last and self.stop.agreed(self.engine.device)
                if last or stopping or due(step, self.cfg.checkpoint.interval):
                    self.save(step, stopping)  # before evaluating: an evaluation that fails loses no step
                if last or due(step, self.cfg.eval.interval):
                    self.evaluate(step)
                if stopping:
                    return self.requeue(step)
                if last:
                    self.print_samples(step)
            return 0
        finally:
            self.metrics.close()

    def step(self) -> int | None:
        """One optimizer step, timed, its loss accounted for (or the run stopped if it diverged);
        None when it was not finite and the run rewound."""
        start = time.perf_counter()
        self.interval.lr = self.engine.get_lr()[0]  # the rate this step uses; step() advances it
        loss = train_step(self.engine, self.batches, self.cfg.train.grad_accum, self.topo.layout.pp > 1)
        problem, self.step_loss = nonfinite(self.engine, loss)  # reads the loss: the step is done
        self.interval.seconds += time.perf_counter() - start
        step = self.engine.global_steps
        self.interval.steps += 1
        if problem is None:
            self.interval.loss_sum += loss
            self.interval.finite += 1
        elif self.cfg.train.on_nonfinite == "rewind":
            return self.rewind(step, problem)
        else:
            self.saver.wait()  # a checkpoint being written counts among those the error names
            check_skippable(self.cfg, self.engine, step, problem)
            self.skipped += 1
            log.warning("step %d: %s; skipped (train.on_nonfinite=skip): the weights are unchanged, "
                        "%d step(s) skipped in this run", step, problem, self.skipped)
        return step

    def log_interval(self, step: int) -> None:
        iv, world = self.interval, dist.get_world_size()
        dist.all_reduce(iv.loss_sum)
        memory = [0.0] * world
        dist.all_gather_object(memory, peak_memory_gib())
        tokens_per_sec = iv.steps * self.tokens_per_step / iv.seconds
        norm = self.engine.get_global_grad_norm()
        values = {
            # the mean over the interval's steps that were not skipped (NaN, null in the jsonl, when all were)
            "loss": iv.loss_sum.item() / (iv.finite * world) if iv.finite else math.nan,
            "lr": iv.lr,
            "grad_norm": math.nan if norm is None else float(norm),
            "tokens_per_sec": tokens_per_sec,
            "flops_per_sec_per_device": tokens_per_sec * self.flops_per_token / world,
            "peak_memory_gib": max(memory),
        }
        if self.cfg.train.on_nonfinite == "rewind":
            values["rewinds"] = self.rewinds
        if self.cfg.train.on_nonfinite == "skip":
            values["skipped_steps"] = self.skipped
            values["nonfinite"] = iv.steps - iv.finite  # the interval's steps left out of its loss
        utilisation = mfu(tokens_per_sec, self.flops_per_token, world, self.peak_flops)
        if utilisation is not None:
            values["mfu"] = utilisation
        self.metrics.log(step, "train", values)
        self.metrics.per_rank(step, "memory/peak_gib", memory)
        busiest = memory.index(max(memory))
        log.info("step %d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.0f tokens/s | %s | peak memory "
                 "%.2f GiB (rank %d)", step, self.cfg.train.max_steps, values["loss"], iv.lr,
                 values["grad_norm"], tokens_per_sec,
                 f"MFU {utilisation:.1%}" if utilisation is not None
                 else f"{values['flops_per_sec_per_device'] / 1e9:.1f} GFLOP/s a device",
                 max(memory), busiest)
        iv.reset()

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.micro_batch_size * t.grad_accum * self.topo.layout.dp * self.cfg.model.block_size

    def evaluate(self, step: int) -> None:
        """The held-out loss, and the eval.tasks (every rank runs the same examples: under ZeRO-3
        each forward gathers parameters collectively)."""
        if self.valid_data is not None:
            loss = evaluate(self.engine, self.valid_data, self.cfg, self.topo)
            self.metrics.log(step, "eval", {"loss": loss, "ppl": math.exp(loss)})
            log.info("step %d | eval loss %.4f | eval ppl %.2f", step, loss, math.exp(loss))
        for task in self.cfg.eval.tasks:  # plan_layout refuses tasks under pp > 1
            name, _, path = task.partition(":")
            results = run_task(self.engine.module, self.tokenizer, name, path or None, self.engine.device,
                               limit=self.cfg.eval.task_limit or None, progress=False)
            self.metrics.log(step, "eval", {f"{name}_{k}": float(v) for k, v in results.items()})
            log.info("step %d | %s | %s", step, name, " | ".join(f"{k} {v:.4g}" for k, v in results.items()))

    def save(self, step: int, stopping: bool) -> None:
        if stopping:
            self.stop.ignore_more()
        loss = self.step_loss if math.isfinite(self.step_loss) else None  # what divergence looks for
        client = {"data": self.batches.state.to_dict(), "tokenizer_sha256": self.train_data.tokenizer_sha256,
                  "skipped_steps": self.skipped, "loss": loss}
        path = self.saver.save(step, client)
        log.info("checkpoint %s%s", path, " being written in the background" if self.saver.async_save else "")

    def rewind(self, step: int, problem: str) -> None:
        """Back to the newest checkpoint whose loss was sane (weights, optimizer, schedule, RNG),
        the data going on from here: the batches since that checkpoint are skipped."""
        self.saver.wait()
        good = last_sane_checkpoint(self.cfg.checkpoint_dir)
        if good is None or self.rewinds >= MAX_REWINDS:
            why = (f"rewound {self.rewinds} times already (at most {MAX_REWINDS})" if good is not None
                   else f"no checkpoint with a sane loss to rewind to in {self.cfg.checkpoint_dir}")
            raise Diverged(diverged_message(self.cfg, step, problem, f"training diverged and {why}", ""))
        self.rewinds += 1
        checkpoint.verify(good, rank=dist.get_rank(), world=dist.get_world_size())
        checkpoint.load(self.engine, self.topo, good)
        self.interval.reset()
        log.warning("step %d: %s; rewound to %s (train.on_nonfinite=rewind, %d of %d), the batches since "
                    "skipped", step, problem, good.name, self.rewinds, MAX_REWINDS)

    def requeue(self, step: int) -> int:
        self.saver.wait()  # requeued only once the checkpoint is published
        log.warning("stopped by %s after step %d; exiting with %d to be requeued",
                    self.stop.received or "a signal on another rank", step, preemption.REQUEUE_EXIT_CODE)
        return preemption.REQUEUE_EXIT_CODE

    def print_samples(self, step: int) -> None:
        cfg = self.cfg
        if not (cfg.sample.prompts and cfg.sample.max_new_tokens):
            return
        if self.topo.layout.pp > 1:
            log.info("samples skipped: generation needs the whole model, and pp=%d splits it",
                     self.topo.layout.pp)
            return
        # Same seed on every rank: under ZeRO-3 all ranks must run the same forwards.
        generator = torch.Generator().manual_seed(cfg.train.seed)
        engine = self.engine
        engine.eval()
        texts = []
        for prompt in cfg.sample.prompts:
            ids = sample(engine.module, self.tokenizer.encode(prompt), cfg.sample.max_new_tokens,
                         cfg.sample.temperature, cfg.sample.top_k, self.tokenizer.eos_id, generator,
                         engine.device)
            texts.append(prompt + self.tokenizer.decode(ids))
        engine.train()
        for text in texts:
            log.info("sample: %s", text.replace("\n", " / "))
        self.metrics.text(step, "samples", "\n\n---\n\n".join(texts))


def train(cfg: RunConfig) -> int:
    """Check, build, resume and run; returns the exit code (preemption.REQUEUE_EXIT_CODE when
    stopped by a signal)."""
    stop = preemption.StopRequest()  # before the (long) build and resume: a signal then is not fatal
    preemption.watch_launcher(stop)  # a launcher that exits without signalling the ranks stops them too
    layout = run_layout(cfg)  # refuses an impossible layout before any compute
    log.info("layout: %s | %s", describe_layout(layout, cfg, not on_cpu()), get_accelerator().device_name())
    check_writable(cfg)
    check_offload(cfg, layout, not on_cpu())
    check_eval_tasks(cfg)
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
    log.info("ds_config: filled %s", "; ".join(filled))

    state, skipped = DataState(), 0
    if resume_from is not None:
        if not checkpoint.saved_layout(resume_from).same_ranks(layout):
            log.info("resuming under another layout than %s's: each rank reads its new share of the "
                     "weights and Adam state", resume_from.name)
        client = checkpoint.load(engine, topo, resume_from)
        state, skipped = DataState(**client["data"]), client.get("skipped_steps", 0)
        log.info("resumed from %s at step %d (epoch %d, window %d)", resume_from,
                 engine.global_steps, state.epoch, state.window)
    batches = RankBatches(train_data, cfg.train.micro_batch_size, topo.dp_rank, layout.dp, state)
    saver = checkpoint.Checkpointer(engine, topo, cfg.checkpoint_dir, cfg.model, tokenizer,
                                    cfg.checkpoint.keep_last, keep=resume_from,
                                    async_save=cfg.checkpoint.async_save)
    try:
        return Trainer(cfg, engine, topo, batches, saver, train_data, valid_data, tokenizer, stop,
                       skipped).run()
    finally:
        saver.wait()  # a background save in flight is finished (and published) before the run ends


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
    leave_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
