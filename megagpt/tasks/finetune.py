"""Fine-tune a pre-trained GPT on a labelled task, as GPT-1 did (Radford et al. 2018, section 3.3).

    python -m megagpt.finetune --checkpoint runs/demo --task multiple_choice \
        --train mc_train.jsonl --valid mc_valid.jsonl --out runs/demo-mc
    deepspeed --num_gpus 2 megagpt/finetune.py --checkpoint ... --zero-stage 3    # any launcher

Each example becomes one or more token sequences with three tokens added to the vocabulary,
start, delimiter and extract (GPT-1, figure 1):
- classification   {"text", "label"}                  start text extract
- entailment       {"premise", "hypothesis", "label"}  start premise delim hypothesis extract
- similarity       {"text_a", "text_b", "label"}       both orderings; their extract states are added
- multiple_choice  {"context", "choices", "label"}     start context delim choice extract, per choice;
                                                       one score each, softmax over the choices
A linear head reads the final hidden state at the extract token (dropout 0.1 before it). The
objective is L2 + lambda * L1: the task's cross-entropy plus lambda (0.5) times the language-model
loss on the same sequences. The defaults are the paper's recipe: lr 6.25e-5, batch 32, 3 epochs,
linear warmup over 0.2% of training then linear decay to 0, weight decay 0.01. Training runs under
DeepSpeed (ZeRO stage --zero-stage); the result is a model folder (see megagpt.checkpoint.pretrained) plus
head.safetensors and finetune.json, which load_finetuned() reads back.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from megagpt.checkpoint import consolidated_state_dict, read_model_config, resolve, save_model
from megagpt.checkpoint import find_tokenizer as checkpoint_tokenizer
from megagpt.config import ConfigError
from megagpt.formats.tokenizer import AnyTokenizer, load_tokenizer
from megagpt.model.gpt import GPT
from megagpt.tasks.evaluate import read_jsonl
from megagpt.training.deepspeed_config import REPOSITORY_DS_CONFIG, device_values, fill_ds_config
from megagpt.training.engine import init_distributed, initialize, leave_distributed, on_cpu

log = logging.getLogger("megagpt.tasks.finetune")
TASK_TYPES = ("classification", "entailment", "similarity", "multiple_choice")
FIELDS = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("text_a", "text_b"),
    "multiple_choice": ("context", "choices"),
}


@dataclass
class TaskSpec:
    """What a fine-tuned model is: its task type, classes, and the ids of the three added tokens."""

    task: str
    n_classes: int  # 1 for multiple_choice: the head scores each choice
    start: int
    delim: int
    extract: int


def transform(spec: TaskSpec, tokenizer: AnyTokenizer, row: dict, max_len: int) -> list[list[int]]:
    """The token sequences of one example (GPT-1's input transformations), each at most max_len.

    Long inputs lose tokens from the front of the first text, keeping the delimiter, the second
    text and the extract token whole: the end is what the extract state summarises.
    """
    missing = [f for f in (*FIELDS[spec.task], "label") if f not in row]
    if missing:
        raise ValueError(f"a {spec.task} example lacks {missing}: lines need {FIELDS[spec.task]} + label")

    def seq(first: str, second: str | None = None) -> list[int]:
        tail = [spec.extract] if second is None else [spec.delim, *tokenizer.encode(second), spec.extract]
        head = tokenizer.encode(first)[-max(0, max_len - 1 - len(tail)) :]
        out = [spec.start, *head, *tail]
        if len(out) > max_len:
            raise ValueError(f"an example's second text alone exceeds block_size={max_len} tokens")
        return out

    if spec.task == "classification":
        return [seq(row["text"])]
    if spec.task == "entailment":
        return [seq(row["premise"], row["hypothesis"])]
    if spec.task == "similarity":  # no inherent order: both, their representations added
        return [seq(row["text_a"], row["text_b"]), seq(row["text_b"], row["text_a"])]
    return [seq(row["context"], " " + choice.lstrip()) for choice in row["choices"]]


class TaskModel(nn.Module):
    """A GPT with a linear head on the extract token's final hidden state."""

    def __init__(self, gpt: GPT, spec: TaskSpec, dropout: float = 0.1):
        super().__init__()
        self.gpt = gpt
        self.spec = spec
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, spec.n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, extract_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx (B, S, T): S sequences per example, right-padded with -1; extract_at (B, S).
        Returns the task logits (B, classes or choices) and the LM loss over the real tokens."""
        B, S, T = idx.shape
        flat = idx.view(B * S, T)
        hidden = self.gpt.transformer(flat.clamp(min=0))
        lm_loss = self.gpt.lm_head(hidden[:, :-1], flat[:, 1:])
        h = hidden[torch.arange(B * S, device=idx.device), extract_at.view(-1)].view(B, S, -1)
        if self.spec.task == "multiple_choice":
            return self.head(self.dropout(h)).squeeze(-1), lm_loss
        return self.head(self.dropout(h.sum(1))), lm_loss  # similarity adds its two orderings


def collate(examples: list[tuple[list[list[int]], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx (B, S, T) padded with -1, extract positions (B, S), labels (B,))."""
    S = max(len(seqs) for seqs, _ in examples)
    if any(len(seqs) != S for seqs, _ in examples):
        raise ValueError("multiple-choice examples in one file must have the same number of choices")
    T = max(len(s) for seqs, _ in examples for s in seqs)
    idx = torch.full((len(examples), S, T), -1, dtype=torch.long)
    extract_at = torch.zeros(len(examples), S, dtype=torch.long)
    for i, (seqs, _) in enumerate(examples):
        for j, s in enumerate(seqs):
            idx[i, j, : len(s)] = torch.tensor(s)
            extract_at[i, j] = len(s) - 1
    return idx, extract_at, torch.tensor([label for _, label in examples])


def load_examples(path: Path, spec: TaskSpec, tokenizer: AnyTokenizer, max_len: int
                  ) -> list[tuple[list[list[int]], int]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    out = []
    for row in read_jsonl(path):
        try:
            label = int(row["label"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: every line needs an integer 'label'") from None
        classes = len(row["choices"]) if spec.task == "multiple_choice" else spec.n_classes
        if not 0 <= label < classes:
            raise ValueError(f"{path}: label {label} is out of range for {classes} classes")
        out.append((transform(spec, tokenizer, row, max_len), label))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


def with_task_tokens(gpt: GPT) -> tuple[GPT, int]:
    """A copy of `gpt` whose vocabulary has 3 more tokens (start, delimiter, extract), their
    embeddings drawn as the others were; returns it and the first new id."""
    old = gpt.config.vocab_size
    bigger = GPT(replace(gpt.config, vocab_size=old + 3))
    state = gpt.state_dict()
    wte = bigger.transformer.wte.weight.detach().clone()
    wte[:old] = state["transformer.wte.weight"][:old]  # the rest: new tokens and padding
    state["transformer.wte.weight"] = state["lm_head.weight"] = wte
    bigger.load_state_dict(state)
    return bigger, old


def build_model(checkpoint: str | Path, task: str, n_classes: int, random_init: bool, seed: int
                ) -> TaskModel:
    config = read_model_config(checkpoint)
    torch.manual_seed(seed)  # the same head, new embeddings and (for random_init) weights everywhere
    gpt = GPT(config)
    if not random_init:
        gpt.load_state_dict(consolidated_state_dict(checkpoint))
    gpt, first = with_task_tokens(gpt)
    spec = TaskSpec(task, 1 if task == "multiple_choice" else n_classes, first, first + 1, first + 2)
    return TaskModel(gpt, spec)


@torch.no_grad()
def accuracy(model: TaskModel, examples: list, device: torch.device | str, batch_size: int = 32) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(examples), batch_size):
        idx, extract_at, labels = collate(examples[i : i + batch_size])
        logits, _ = model(idx.to(device), extract_at.to(device))
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
    model.train(was_training)
    return correct / len(examples)


def finetune(args: argparse.Namespace) -> dict[str, float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    checkpoint = resolve(args.checkpoint)
    tokenizer = checkpoint_tokenizer(checkpoint)
    model = build_model(checkpoint, args.task, args.classes, args.random_init, args.seed)
    max_len = model.gpt.config.block_size
    train = load_examples(Path(args.train), model.spec, tokenizer, max_len)
    valid = load_examples(Path(args.valid), model.spec, tokenizer, max_len)
    micro = args.micro_batch_size or args.batch_size // world
    accum = args.batch_size // (micro * world)
    if accum < 1 or micro * accum * world != args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} is not micro-batch {micro} x accumulation x "
                         f"{world} ranks; pick sizes that divide it")
    # A last batch too small to give every rank its micro-batches is left out of each epoch.
    per_epoch = len(train) // args.batch_size + (len(train) % args.batch_size >= micro * accum * world)
    steps = args.epochs * per_epoch
    warmup = max(1, round(args.warmup * steps))
    ds_config, _ = fill_ds_config(args.ds_config, {
        "train_micro_batch_size_per_gpu": (micro, "--micro-batch-size"),
        "gradient_accumulation_steps": (accum, "--batch-size / (micro-batch x ranks)"),
        "train_batch_size": (args.batch_size, "--batch-size"),
        "optimizer.params.lr": (args.lr, "--lr"),
        "optimizer.params.weight_decay": (args.weight_decay, "--weight-decay"),
        "zero_optimization.stage": (args.zero_stage, "--zero-stage"),
        **device_values(not on_cpu(), "auto", "fine-tuning: bf16 on a GPU"),
    }, defaults={"gradient_clipping": (1.0, "fine-tuning default"),
                 "optimizer.params.betas": ([0.9, 0.999], "Adam's defaults, as GPT-1")})
    linear = lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    engine = initialize(model, ds_config, args.weight_decay, linear)
    device = engine.device
    log.info("%s: %d train / %d valid examples, %d steps of %d, lambda %.2f, zero %d, %s init",
             args.task, len(train), len(valid), steps, args.batch_size, args.lm_coef, args.zero_stage,
             "random" if args.random_init else str(checkpoint))
    rng = random.Random(args.seed)
    bar = tqdm(total=steps, desc="fine-tune", unit="step", disable=rank != 0)
    for epoch in range(args.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)  # the same order on every rank; each takes its slice of every batch
        for b in range(per_epoch):
            mine = order[b * args.batch_size : (b + 1) * args.batch_size][rank::world]
            for a in range(accum):
                idx, extract_at, labels = collate([train[i] for i in mine[a::accum]])
                logits, lm_loss = engine(idx.to(device), extract_at.to(device))
                loss = F.cross_entropy(logits.float(), labels.to(device)) + args.lm_coef * lm_loss
                engine.backward(loss)
                engine.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        log.info("epoch %d: valid accuracy %.4f", epoch + 1, accuracy(engine.module, valid, device))
    bar.close()
    result = {"valid_acc": accuracy(engine.module, valid, device), "train_examples": len(train),
              "valid_examples": len(valid), "steps": steps}
    if args.out:
        save_finetuned(engine, Path(args.out), tokenizer, result)
    return result


def save_finetuned(engine: deepspeed.DeepSpeedEngine, out: Path, tokenizer: AnyTokenizer,
                   result: dict[str, float]) -> None:
    model: TaskModel = engine.module
    # Under ZeRO-3 each rank holds a shard: gather whole parameters (collective) before saving.
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=zero3):
        if dist.get_rank() == 0:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            gpt = {k[len("gpt.") :]: v for k, v in state.items() if k.startswith("gpt.")}
            save_model(out, gpt, model.gpt.config, tokenizer)
            save_file({k[len("head.") :]: v.float().contiguous() for k, v in state.items()
                       if k.startswith("head.")}, str(out / "head.safetensors"))
            (out / "finetune.json").write_text(json.dumps({**asdict(model.spec), **result}, indent=2) + "\n")
    dist.barrier()


def load_finetuned(folder: str | Path, device: torch.device | str = "cpu") -> tuple[TaskModel, AnyTokenizer]:
    """A fine-tuned model folder written by this module, in eval mode, and its tokenizer."""
    folder = Path(folder)
    meta = json.loads((folder / "finetune.json").read_text())
    spec = TaskSpec(**{k: meta[k] for k in ("task", "n_classes", "start", "delim", "extract")})
    gpt = GPT(read_model_config(folder))
    gpt.load_state_dict(consolidated_state_dict(folder))
    model = TaskModel(gpt, spec)
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return model.to(device).eval(), load_tokenizer(folder)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="pre-trained checkpoint or model folder")
    p.add_argument("--task", required=True, choices=TASK_TYPES)
    p.add_argument("--train", required=True, help="JSONL of labelled examples")
    p.add_argument("--valid", required=True, help="JSONL of held-out examples (accuracy each epoch)")
    p.add_argument("--out", help="write the fine-tuned model folder here")
    p.add_argument("--classes", type=int, default=2, help="classes of classification/entailment/similarity")
    p.add_argument("--lr", type=float, default=6.25e-5)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all ranks, accumulation)")
    p.add_argument("--micro-batch-size", type=int, default=0, help="per rank; 0: batch-size / ranks")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=0.002, help="fraction of steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lm-coef", type=float, default=0.5, help="lambda of the auxiliary LM loss")
    p.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--random-init", action="store_true", help="same shape, random weights (a baseline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ds-config", default=str(REPOSITORY_DS_CONFIG),
                   help="DeepSpeed config whose \"auto\" values the options fill (default: the repository's)")
    p.add_argument("--json", help="write the final metrics here")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    init_distributed()
    logging.basicConfig(level=logging.INFO if dist.get_rank() == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    deepspeed.utils.logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated")
    try:
        result = finetune(args)
    except (FileNotFoundError, ValueError, ConfigError) as e:
        log.error("%s", e)
        return 2
    if dist.get_rank() == 0:
        print(json.dumps(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    dist.barrier()
    leave_distributed()
    return 0

