"""The model computes what Hugging Face's GPT-2 computes, and has the papers' shapes."""

import math
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from megagpt.config import ModelConfig
from megagpt.model import linear_cross_entropy
from megagpt.model.gpt import GPT


def tiny_hf(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=320, n_positions=48,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def test_logits_and_loss_equal_hugging_face():
    hf = tiny_hf()
    ours = GPT.from_hf(hf).eval()
    idx = torch.randint(0, 320, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx, labels=idx)
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(logits[..., :320], expected.logits[:, :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, expected.loss, atol=1e-5, rtol=0)


def test_vocab_padding_takes_no_probability_and_no_gradient():
    padded = GPT.from_hf(tiny_hf()).eval()  # 320 ids, 384 rows (vocab_pad_multiple 128); no dropout
    assert padded.transformer.wte.weight.shape[0] == padded.config.padded_vocab_size == 384
    plain = GPT(replace(padded.config, vocab_pad_multiple=1)).eval()
    plain.load_state_dict({k: v[:320] if "wte" in k or "lm_head" in k else v
                           for k, v in padded.state_dict().items()})
    idx = torch.randint(0, 320, (3, 48), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (padded, plain):
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=1e-6)
    assert torch.isneginf(logits_padded := padded(idx[:, :-1], idx[:, 1:])[0][..., 320:]).all()
    assert logits_padded.shape[-1] == 64
    grad = padded.transformer.wte.weight.grad
    torch.testing.assert_close(grad[:320], plain.transformer.wte.weight.grad, atol=1e-7, rtol=1e-5)
    assert not grad[320:].any()
    with torch.no_grad():  # what sampling and evaluation see: the real vocabulary only
        torch.testing.assert_close(padded(idx)[0], plain(idx)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows", [7, 64, 1000])  # ragged last chunk, several chunks, one chunk
def test_chunked_loss_equals_the_loss_of_whole_logits(rows, monkeypatch):
    monkeypatch.setattr(linear_cross_entropy, "CPU_CHUNK_ELEMENTS", rows * 320)
    model = GPT.from_hf(tiny_hf()).eval()  # no dropout; 320 ids in 384 rows: padding stays out
    idx = torch.randint(0, 320, (3, 48), generator=torch.Generator().manual_seed(1))
    targets = idx[:, 1:].clone()
    targets[0, :20] = -1
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        logits, loss = model(idx[:, :-1], targets, return_logits=return_logits)
        loss.backward()
        results.append((logits, loss, [p.grad.clone() for p in model.parameters()]))
    (whole_logits, whole, whole_grads), (none, chunked, chunked_grads) = results
    assert whole_logits.shape == (3, 47, 384) and none is None
    torch.testing.assert_close(chunked, whole, atol=0, rtol=1e-6)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    assert not model.transformer.wte.weight.grad[320:].any()
    with torch.no_grad():  # evaluation: the same loss, no gradients computed
        torch.testing.assert_close(model(idx[:, :-1], targets, return_logits=False)[1], whole.detach(),
                                   atol=0, rtol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_the_whole_logits_loss():
    model = GPT.from_hf(tiny_hf()).eval()
    idx = torch.randint(0, 320, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [model(idx[:, :-1], idx[:, 1:], return_logits=flag)[1] for flag in (True, False)]
    grads = [torch.autograd.grad(loss, model.transformer.wte.weight)[0] for loss in losses]
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], atol=0, rtol=1e-3)
    torch.testing.assert_close(grads[1], grads[0], atol=5e-4, rtol=0)  # bf16: 8 significant bits


def test_export_to_hugging_face_round_trips():
    ours = GPT(ModelConfig.preset("gpt2-tiny")).eval()
    hf = ours.to_hf().eval()
    idx = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)
    back = GPT.from_hf(hf)
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("preset", "expected"), [
    ("gpt2-small", 124_439_808),   # HF GPT2LMHeadModel.num_parameters()
    ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
])
def test_parameter_counts_match_hugging_face(preset, expected):
    with torch.device("meta"):  # counts shapes without allocating 6 GB
        assert GPT(ModelConfig.preset(preset, vocab_pad_multiple=1)).num_parameters() == expected
        padded = GPT(ModelConfig.preset(preset)).num_parameters()
    assert padded == expected + (50304 - 50257) * ModelConfig.preset(preset).n_embd


@pytest.mark.parametrize(("preset", "shape"), [
    ("gpt2-small", {}), ("gpt2-xl", {"n_layer": 48, "n_head": 25, "n_embd": 1600}),
])
def test_parameter_count_equals_hf_model_of_the_same_shape(preset, shape):
    with torch.device("meta"):
        ours = GPT(ModelConfig.preset(preset, vocab_pad_multiple=1))
        hf = GPT2LMHeadModel(GPT2Config(**shape))
    assert ours.num_parameters() == hf.num_parameters()


def test_gpt2_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    config = ModelConfig.preset("gpt2-tiny", n_layer=8, n_embd=128)
    model = GPT(config)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt1_is_post_ln_without_final_layernorm():
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt1-tiny")).eval()
    assert isinstance(model.transformer.ln_f, torch.nn.Identity)
    block = model.transformer.h[0]
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        y = block(x)
        h = block.ln_1(x + block.attn(x))
        torch.testing.assert_close(y, block.ln_2(h + block.mlp(h)))
    # Post-LN: the block ends on a LayerNorm, so every position comes out normalised.
    assert torch.allclose(y.mean(-1), torch.zeros(2, 10), atol=1e-5)
    with torch.device("meta"):
        assert GPT(ModelConfig.preset("gpt1", vocab_pad_multiple=1)).num_parameters() == 116_534_784


def test_loss_starts_near_ln_vocab_and_ignores_minus_one():
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-tiny")).eval()
    idx, targets = torch.randint(0, 512, (2, 4, 64))
    with torch.no_grad():
        _, loss = model(idx, targets)
        targets[:, :32] = -1
        _, half = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.3
    assert half.item() != loss.item()


def test_too_long_sequence_is_refused():
    model = GPT(ModelConfig.preset("gpt2-tiny"))
    with pytest.raises(ValueError, match="block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("chunk", [1, 2])
def test_activation_checkpointing_recomputes_the_same_loss_and_gradients(chunk):
    config = ModelConfig.preset("gpt2-tiny", n_layer=3, dropout=0.1)  # dropout: the RNG is replayed
    idx = torch.randint(0, config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for blocks in (0, chunk):
        torch.manual_seed(0)
        model = GPT(config).train()
        model.transformer.checkpoint_blocks = blocks
        loss = model(idx[:, :-1], idx[:, 1:])[1]
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters()]))
    (plain_loss, plain_grads), (ckpt_loss, ckpt_grads) = results
    torch.testing.assert_close(ckpt_loss, plain_loss, atol=0, rtol=0)
    for a, b in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
