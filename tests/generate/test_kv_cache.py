"""The KV cache changes the cost of generation, not its result: cached == uncached, batched == alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megagpt import checkpoint
from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT, KVCache
from megagpt.tasks.generate import generate, main

ROOT = Path(__file__).resolve().parents[2]


def lambada_texts(n: int) -> list[str]:
    lines = (ROOT / "data/eval/lambada/lambada_test.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


def test_logits_with_the_cache_equal_a_full_forward():
    torch.manual_seed(0)
    for arch in ("gpt2-tiny", "gpt1-tiny"):
        model = GPT(ModelConfig.preset(arch)).eval()
        idx = torch.randint(0, 512, (3, 40))
        with torch.no_grad():
            full, _ = model(idx)
            cache = KVCache(model.config, torch.ones(3, 17, dtype=torch.bool))
            chunks = [model(idx[:, :17], cache=cache)[0]]  # a prefill, then one token at a time
            chunks += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(17, 40)]
        torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_cached_batched_greedy_equals_uncached_one_by_one_on_a_trained_model(trained_run):
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    # Real prompts of different lengths (left padding) and 40 new tokens: past block_size=32.
    prompts = [tokenizer.encode(text)[:n] for text, n in zip(lambada_texts(4), (3, 11, 20, 7))]
    cached = generate(model, prompts, 40, temperature=0)
    uncached = generate(model, prompts, 40, temperature=0, use_cache=False)
    assert cached == uncached
    assert all(len(row) == 40 for row in cached)
    assert len({tuple(row) for row in cached}) > 1


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_cached_sampling_equals_uncached_for_the_same_seed(trained_run):
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    prompt = [tokenizer.encode("The company said")]
    runs = [generate(model, prompt, 25, temperature=0.9, top_k=50, top_p=0.95, use_cache=cache,
                     generator=torch.Generator().manual_seed(7)) for cache in (True, False)]
    assert runs[0] == runs[1]


def test_each_row_stops_at_its_own_end_of_text():
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-tiny")).eval()
    prompts = [[1, 2, 3], [9, 8]]
    free = generate(model, prompts, 12, temperature=0)
    eos = free[0][4]
    stopped = generate(model, prompts, 12, temperature=0, eos_id=eos)
    for row, full in zip(stopped, free):
        assert row == (full[: full.index(eos)] if eos in full else full)


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_command_line_prints_each_prompts_continuation(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run), "--prompt", "The", "--prompt", "In a statement",
                 "--max-new", "10", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("-" * 40) == 2 and "In a statement" in out
