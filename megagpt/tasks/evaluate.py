"""Zero- and few-shot evaluation, as in the GPT-2 and GPT-3 papers.

    python -m megagpt.evaluate --checkpoint runs/demo --task wikitext2
    python -m megagpt.evaluate --checkpoint runs/demo --task lambada --json lambada.json --tb runs/demo
    python -m megagpt.evaluate --checkpoint CKPT --task choice --file hellaswag.jsonl \
        --shots 5 --train-file hellaswag_train.jsonl

Tasks (default files are the bundled sets in data/eval/):
- wikitext2: perplexity of the raw WikiText-2 test file. As GPT-2 did, WikiText's tokenisation
  artefacts are undone first (an invertible detokeniser), the text is scored with a sliding window
  (each window gives context to the stride of new tokens it scores), and the loss is reported per
  model token and per original word-level token (the 245,569 tokens of the published test set).
- lambada: the last word of each passage (one or more tokens) given the rest; accuracy counts a
  passage when greedy decoding yields the whole word, perplexity is exp(mean NLL of the word).
- choice: JSONL of {"context", "choices", "label"}; each choice is scored by its log-likelihood after
  the context, summed (acc) and divided by its token count (acc_norm).
--shots K prepends K examples drawn from --train-file (same format), separated by blank lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from megagpt.config import EVAL_DEFAULT_FILES as DEFAULT_FILES
from megagpt.config import EVAL_TASKS as TASKS
from megagpt.formats.tokenizer import AnyTokenizer

# The bundled WikiText-2 test file (blank lines removed) and its published word-level token count.
WIKITEXT2_TEST_SHA256 = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"
WIKITEXT2_TEST_WORDS = 245_569


@dataclass
class Example:
    """A continuation to score after a context, both as token ids."""

    context: list[int]
    continuation: list[int]


@torch.no_grad()
def score(model: nn.Module, examples: list[Example], device: torch.device | str = "cpu",
          batch_size: int = 16, progress: bool = True, desc: str = "score") -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, whether greedy decoding yields it) for each example.

    The context is cut from the left to fit block_size; examples are batched, right-padded.
    """
    block = model.config.block_size
    out: list[tuple[float, bool]] = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch", disable=not progress):
        rows = []
        for ex in examples[start : start + batch_size]:
            if not ex.context:
                raise ValueError("an example has no context tokens; start it with the end-of-text token")
            if not 0 < len(ex.continuation) < block:
                raise ValueError(f"a continuation of {len(ex.continuation)} tokens does not fit "
                                 f"model.block_size={block}")
            rows.append((ex.context + ex.continuation)[-(block + 1) :])
        width = max(len(r) for r in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
        logits, _ = model(x.to(device))
        logprobs = logits.float().log_softmax(-1).cpu()
        for i, (r, ex) in enumerate(zip(rows, examples[start : start + batch_size])):
            n = len(ex.continuation)
            span = logprobs[i, len(r) - 1 - n : len(r) - 1]
            target = torch.tensor(r[-n:])
            greedy = bool((span.argmax(-1) == target).all())
            out.append((span.gather(1, target[:, None]).sum().item(), greedy))
    return out


@torch.no_grad()
def token_nlls(model: nn.Module, ids: list[int], stride: int | None = None,
               device: torch.device | str = "cpu", batch_size: int = 8, progress: bool = True
               ) -> torch.Tensor:
    """The NLL of ids[1:], each token scored once with a sliding window of block_size tokens.

    Window w starts at w * stride and scores only the tokens the previous window did not, so
    every token after the first window sees at least block_size - stride tokens of context.
    """
    block = model.config.block_size
    stride = stride or block // 2
    if not 0 < stride <= block:
        raise ValueError(f"stride must be in (0, block_size={block}], got {stride}")
    windows, scored_to = [], 0  # (start, first target to score), targets are positions start+1..
    for start in range(0, max(1, len(ids) - 1), stride):
        end = min(start + block, len(ids) - 1)
        windows.append((start, end, scored_to))
        scored_to = end
        if end == len(ids) - 1:
            break
    nlls = []
    for i in tqdm(range(0, len(windows), batch_size), desc="windows", unit="batch", disable=not progress):
        batch = windows[i : i + batch_size]
        x = torch.zeros(len(batch), block, dtype=torch.long)
        y = torch.full((len(batch), block), -1, dtype=torch.long)
        for row, (start, end, first) in enumerate(batch):
            x[row, : end - start] = torch.tensor(ids[start:end])
            skip = first - start  # targets ids[start+1 .. first] were scored by an earlier window
            y[row, skip : end - start] = torch.tensor(ids[start + 1 + skip : end + 1])
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-1,
                               reduction="none").view(len(batch), block)
        for row, (start, end, first) in enumerate(batch):
            nlls.append(loss[row, first - start : end - start].cpu())
    return torch.cat(nlls)


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation (spaces around punctuation, @-@ joins, = = headings), as the
    detokeniser of Megatron-LM / lm-evaluation-harness does, so the model sees ordinary text."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for joined in ("-", ",", "."):  # number separators: 1 @,@ 000 -> 1,000
        text = text.replace(f" @{joined}@ ", joined)
    for mark in (":", ";", ".", "!", "?", ","):
        text = text.replace(f" {mark} ", f"{mark} ")
    for open_, close in (("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'")):
        o, c = re.escape(open_), re.escape(close)
        text = re.sub(rf"{o}\s*([^{c}]*?)\s*{c}", rf"{open_}\1{close}", text)
    for n in (4, 3, 2):
        text = text.replace(" ".join("=" * n), "=" * n)
    text = text.replace(" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}")
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ").replace(" 's", "'s")
    return text


def wikitext_words(path: Path) -> tuple[str, int]:
    """The file's text and its count of WikiText word-level tokens (whitespace tokens plus one
    end-of-line token a line); for the bundled test file, the published 245,569, which also counts
    the end-of-line tokens of the blank lines that copy dropped."""
    data = path.read_bytes()
    raw = data.decode("utf-8").replace("\r\n", "\n")  # WikiText's own files end lines with \n
    if hashlib.sha256(data).hexdigest() == WIKITEXT2_TEST_SHA256:
        return raw, WIKITEXT2_TEST_WORDS
    return raw, len(raw.split()) + raw.count("\n")


def wikitext2(model: nn.Module, tokenizer: AnyTokenizer, path: Path, device: torch.device | str,
              stride: int | None = None, limit: int | None = None, progress: bool = True
              ) -> dict[str, float]:
    raw, words = wikitext_words(path)
    if limit is not None:  # the first `limit` lines, counted as any other file
        raw = "".join(raw.splitlines(keepends=True)[:limit])
        words = len(raw.split()) + raw.count("\n")
    ids = [tokenizer.eos_id, *tokenizer.encode(wikitext_detokenize(raw))]  # eos: context for token 1
    nll = token_nlls(model, ids, stride, device, progress=progress).sum().item()
    tokens = len(ids) - 1
    return {"token_ppl": math.exp(nll / tokens), "word_ppl": math.exp(nll / words), "nll_sum": nll,
            "tokens": tokens, "words": words}


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not JSON: {e}") from None
    return rows


def lambada_split(text: str) -> tuple[str, str]:
    context, _, word = text.rstrip().rpartition(" ")
    return context, " " + word


def choice_row(row: dict, path: Path) -> tuple[str, list[str], int]:
    try:
        context, choices, label = row["context"], row["choices"], int(row["label"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{path}: every line needs 'context', 'choices' (a list) and 'label' (an index)"
        ) from None
    if not 0 <= label < len(choices):
        raise ValueError(f"{path}: label {label} is not an index into its {len(choices)} choices")
    return context, choices, label


def few_shot_prefix(shots: int, train: list[str], rng: random.Random, exclude: str | None = None) -> str:
    """K solved examples, each followed by a blank line, as GPT-3 separated them."""
    pool = [t for t in train if t != exclude]
    if shots > len(pool):
        raise ValueError(f"--shots {shots} needs at least that many training examples, have {len(pool)}")
    return "".join(t + "\n\n" for t in rng.sample(pool, shots))


def lambada(model: nn.Module, tokenizer: AnyTokenizer, path: Path, device: torch.device | str,
            shots: int = 0, train: list[str] = (), limit: int | None = None, seed: int = 0,
            progress: bool = True) -> dict[str, float]:
    texts = [r["text"] for r in read_jsonl(path)][:limit]
    rng = random.Random(seed)
    examples = []
    for text in texts:
        context, word = lambada_split(text)
        prefix = few_shot_prefix(shots, train, rng, exclude=text) if shots else ""
        ctx = tokenizer.encode(prefix + context) or [tokenizer.eos_id]
        examples.append(Example(ctx, tokenizer.encode(word)))
    results = score(model, examples, device, progress=progress, desc="lambada")
    nll = -sum(lp for lp, _ in results) / len(results)
    return {"acc": sum(g for _, g in results) / len(results), "ppl": math.exp(nll), "examples": len(results)}


def choice(model: nn.Module, tokenizer: AnyTokenizer, path: Path, device: torch.device | str,
           shots: int = 0, train: list[str] = (), limit: int | None = None, seed: int = 0,
           progress: bool = True) -> dict[str, float]:
    rows = [choice_row(r, path) for r in read_jsonl(path)][:limit]
    rng = random.Random(seed)
    examples, spans = [], []
    for context, choices, _ in rows:
        prefix = few_shot_prefix(shots, train, rng) if shots else ""
        ctx = tokenizer.encode(prefix + context) or [tokenizer.eos_id]
        spans.append((len(examples), len(choices)))
        examples += [Example(ctx, tokenizer.encode(" " + c.lstrip())) for c in choices]
    results = score(model, examples, device, progress=progress, desc="choice")
    acc = acc_norm = 0
    for (first, n), (_, _, label) in zip(spans, rows):
        lls = [results[first + i][0] for i in range(n)]
        norm = [ll / len(examples[first + i].continuation) for i, ll in enumerate(lls)]
        acc += max(range(n), key=lls.__getitem__) == label
        acc_norm += max(range(n), key=norm.__getitem__) == label
    return {"acc": acc / len(rows), "acc_norm": acc_norm / len(rows), "examples": len(rows)}


def train_examples(task: str, path: Path) -> list[str]:
    """A train file's solved examples as few-shot text."""
    if task == "lambada":
        return [r["text"] for r in read_jsonl(path)]
    rows = [choice_row(r, path) for r in read_jsonl(path)]
    return [f"{context} {choices[label].lstrip()}" for context, choices, label in rows]


def run_task(model: nn.Module, tokenizer: AnyTokenizer, task: str, path: str | Path | None = None,
             device: torch.device | str = "cpu", shots: int = 0, train_file: str | Path | None = None,
             limit: int | None = None, stride: int | None = None, progress: bool = True) -> dict[str, float]:
    """Evaluate `model` on one task; the metrics as a flat dict of numbers."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    path = Path(path) if path else DEFAULT_FILES.get(task)
    if path is None:
        raise ValueError(f"task {task} needs --file (JSONL of context / choices / label)")
    if not path.is_file():
        raise FileNotFoundError(f"{task} file {path} does not exist")
    was_training = model.training
    model.eval()
    try:
        if task == "wikitext2":
            if shots:
                raise ValueError("wikitext2 is a perplexity over one text; --shots does not apply")
            return wikitext2(model, tokenizer, path, device, stride, limit, progress)
        train: list[str] = []
        if shots:
            if train_file is None:
                raise ValueError(f"--shots {shots} needs --train-file with {task} examples")
            train = train_examples(task, Path(train_file))
        run = lambada if task == "lambada" else choice
        return run(model, tokenizer, path, device, shots, train, limit, progress=progress)
    finally:
        model.train(was_training)


def main(argv: list[str] | None = None) -> int:
    from megagpt.checkpoint import load_pretrained, resolve
    from megagpt.training.metrics import MetricsWriter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, checkpoints/ or run folder, or model folder")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--file", help="evaluation file (default: the bundled test set of the task)")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples prepended (GPT-3)")
    p.add_argument("--train-file", help="where --shots examples come from (same format as --file)")
    p.add_argument("--limit", type=int, help="first N examples (lambada, choice) or lines (wikitext2)")
    p.add_argument("--stride", type=int, help="wikitext2 sliding-window stride (default block_size/2)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--tb", help="also log the results to this run folder's TensorBoard: eval/<task>_<metric>")
    args = p.parse_args(argv)
    try:
        folder = resolve(args.checkpoint)
        model, tokenizer, device = load_pretrained(folder)
        results = run_task(model, tokenizer, args.task, args.file, device, args.shots, args.train_file,
                           args.limit, args.stride)
    except (FileNotFoundError, ValueError) as e:
        print(f"megagpt.tasks.evaluate: {e}", file=sys.stderr)
        return 2
    record = {"task": args.task, "checkpoint": str(folder), "shots": args.shots, **results}
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.tb:
        step = int(m.group(1)) if (m := re.fullmatch(r"step(\d+)", folder.name)) else 0
        writer = MetricsWriter(Path(args.tb), enabled=True)
        writer.log(step, "eval", {f"{args.task}_{k}": float(v) for k, v in results.items()})
        writer.close()
    return 0

