"""Sampling: greedy equals the argmax path, top-k=1 is greedy, top-p keeps the nucleus, seeds
reproduce, end-of-text stops."""

import torch

from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT
from megagpt.tasks.generate import filter_logits, sample


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.preset("gpt2-tiny", block_size=16)).eval()


def test_greedy_follows_the_argmax_and_slides_past_block_size():
    gpt = model()
    prompt = [5, 17, 42]
    out = sample(gpt, prompt, max_new_tokens=20, temperature=0)
    idx = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            logits, _ = gpt(torch.tensor([idx[-16:]]))
            idx.append(int(logits[0, -1].argmax()))
    assert out == idx[3:]


def test_top_k_one_is_greedy_and_seeds_reproduce():
    gpt = model()
    greedy = sample(gpt, [1, 2], 10, temperature=0)
    assert sample(gpt, [1, 2], 10, temperature=1.0, top_k=1) == greedy
    a = sample(gpt, [1, 2], 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = sample(gpt, [1, 2], 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert a == b


def test_top_p_keeps_the_smallest_set_holding_that_mass():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    kept = filter_logits(probs.log(), top_p=0.8).isfinite()
    assert kept.tolist() == [[True, False, True, False]]  # 0.5 + 0.3 reaches 0.8
    assert filter_logits(probs.log(), top_p=0.81).isfinite().tolist() == [[True, False, True, True]]
    assert filter_logits(probs.log(), top_k=1).isfinite().tolist() == [[True, False, False, False]]


def test_stops_at_end_of_text():
    gpt = model()
    greedy = sample(gpt, [1, 2], 10, temperature=0)
    eos = greedy[3]
    assert sample(gpt, [1, 2], 10, temperature=0, eos_id=eos) == greedy[: greedy.index(eos)]
