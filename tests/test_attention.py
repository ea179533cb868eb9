"""GPT-3's banded attention layers equal their definition: dense attention under a banded causal mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megagpt.config import ConfigError, ModelConfig, load_config
from megagpt.model.attention import (
    banded_attention,
    banded_mask,
    blocked_banded_attention,
    flex_banded_attention,
)
from megagpt.model.gpt import GPT, CausalSelfAttention, KVCache, LocalCausalSelfAttention
from megagpt.sizing.flops import training_flops_per_token
from megagpt.sizing.planner import Cluster, plan
from megagpt.tasks.generate import generate


def sparse(window: int = 8, **overrides) -> ModelConfig:
    """gpt2-tiny (64 positions) with GPT-3's alternating dense and banded layers."""
    return ModelConfig.preset("gpt2-tiny", attention="gpt3_sparse", local_window=window, **overrides)


def masked_reference(q, k, v, window):
    T = q.size(-2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=banded_mask(T, T, window))


# Ragged last block, a two-position band, a band of the whole context but one, several blocks.
@pytest.mark.parametrize("T, window", [(64, 8), (50, 7), (33, 2), (40, 39), (100, 16)])
@pytest.mark.parametrize("kernel", [blocked_banded_attention, banded_attention])
def test_banded_kernels_equal_dense_attention_under_a_banded_mask(kernel, T, window):
    torch.manual_seed(0)  # inputs of their own, not whatever the RNG holds after other tests
    q, k, v = (torch.randn(2, 3, T, 16, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, T, 16)
    got = kernel(q, k, v, window)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    want = masked_reference(q, k, v, window)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    # fp32 rounding: a gradient near 10 may differ in its last bit (1.2e-6) with the thread count
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # The check can fail: plain causal attention is not the band.
    assert (F.scaled_dot_product_attention(q, k, v, is_causal=True) - want).abs().max() > 1e-3


@pytest.mark.slow  # compiling FlexAttention for the CPU takes about 45 s here
def test_flex_attention_kernel_equals_dense_attention_under_a_banded_mask():
    """The GPU kernel's block mask, checked forward on the CPU (FlexAttention has no CPU backward)."""
    for T, window in [(256, 32), (200, 7)]:  # whole 128-blocks, and a ragged length
        q, k, v = (torch.randn(2, 3, T, 16) for _ in range(3))
        torch.testing.assert_close(flex_banded_attention(q, k, v, window), masked_reference(q, k, v, window),
                                   atol=1e-6, rtol=0)


def test_banded_layer_equals_the_dense_layer_with_an_explicit_banded_mask():
    class MaskedDense(CausalSelfAttention):  # the definition: dense attention, banded causal mask
        def attend(self, q, k, v, dropout_p):
            return masked_reference(q, k, v, 8)

    config = sparse(8)
    torch.manual_seed(0)
    banded = LocalCausalSelfAttention(config)
    reference = MaskedDense(config)
    reference.load_state_dict(banded.state_dict())
    x = torch.randn(3, 64, 64)
    outputs = []
    for layer in (banded, reference):
        y = layer(x)
        y.square().sum().backward()
        outputs.append((y, {n: p.grad for n, p in layer.named_parameters()}))
    (y, grads), (y_ref, grads_ref) = outputs
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=0)


def test_gpt3_sparse_alternates_dense_and_banded_layers():
    model = GPT(sparse(8, n_layer=4))
    kinds = [type(block.attn) for block in model.transformer.h]
    assert kinds == [CausalSelfAttention, LocalCausalSelfAttention] * 2
    per_layer = ModelConfig.preset("gpt2-tiny", attention="per_layer", attention_layers=["local", "local"],
                                   local_window=4)
    assert all(isinstance(b.attn, LocalCausalSelfAttention) for b in GPT(per_layer).transformer.h)


def test_a_window_covering_the_context_is_dense_attention_exactly():
    torch.manual_seed(0)
    dense = GPT(ModelConfig.preset("gpt2-tiny")).eval()
    wide = GPT(sparse(64)).eval()
    narrow = GPT(sparse(8)).eval()
    for model in (wide, narrow):
        model.load_state_dict(dense.state_dict())
    idx = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        assert torch.equal(wide(idx)[0], dense(idx)[0])
        assert not torch.allclose(narrow(idx)[0], dense(idx)[0], atol=1e-3)  # the band is in effect


def test_cached_logits_of_a_sparse_model_equal_a_full_forward():
    torch.manual_seed(0)
    model = GPT(sparse(5, n_layer=3)).eval()
    idx = torch.randint(0, 512, (3, 40))
    valid = torch.ones(3, 17, dtype=torch.bool)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, valid)
        chunks = [model(idx[:, :17], cache=cache)[0]]  # a prefill longer than the window, then tokens
        chunks += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(17, 40)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)
    # Dense layers keep every position; banded ones only the window - 1 a next query can see.
    assert [layer.k.size(2) for layer in cache.layers] == [64, 4, 64]


def test_cached_generation_of_a_sparse_model_equals_uncached():
    torch.manual_seed(0)
    model = GPT(sparse(6, block_size=24)).eval()
    # Left padding in the batch, and 30 new tokens: the context slides past block_size.
    prompts = [[5, 9, 2], [7] * 11, list(range(20, 40))]
    cached = generate(model, prompts, 30, temperature=0)
    assert cached == generate(model, prompts, 30, temperature=0, use_cache=False)
    assert len({tuple(row) for row in cached}) > 1  # the rows really differ
    runs = [generate(model, prompts[1:2], 30, temperature=1.0, use_cache=flag,
                     generator=torch.Generator().manual_seed(3)) for flag in (True, False)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("overrides, message", [
    (["model.attention=gpt3_sparse"], r"local layers but model.local_window=0: set the band width"),
    (["model.local_window=16"], r"model.local_window=16 has no effect.*set model.attention=gpt3_sparse"),
    (["model.attention=banded"], r"model.attention='banded'.*choose one of \('dense', 'gpt3_sparse'"),
    (["model.attention=per_layer", "model.attention_layers=[dense]"],
     r"names 1 layers but model.n_layer=2"),
    (["model.attention=per_layer", "model.attention_layers=[dense, sparse]", "model.local_window=4"],
     r"model.attention_layers\[1\]='sparse': use 'dense' or 'local'"),
    (["model.attention_layers=[dense, local]", "model.local_window=4"],
     r"attention_layers is given but model.attention='dense' ignores it: set model.attention=per_layer"),
    (["model.attention=gpt3_sparse", "model.local_window=-1"], r"model.local_window=-1"),
])
def test_attention_config_errors_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny.yaml", overrides)


def test_per_layer_pattern_from_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  preset: gpt2-tiny\n  n_layer: 3\n  attention: per_layer\n"
                 "  attention_layers: [dense, local, local]\n  local_window: 16\n")
    assert load_config(f).model.layer_attention == ["dense", "local", "local"]


def test_flops_and_plan_count_banded_layers_by_their_window():
    dense = ModelConfig.preset("gpt2-xl", block_size=4096)
    gpt3 = ModelConfig.preset("gpt2-xl", block_size=4096, attention="gpt3_sparse", local_window=256)
    # Half the layers attend to 256 positions instead of 4096.
    saved = 12 * 1600 * 24 * (4096 - 256)
    assert training_flops_per_token(dense) - training_flops_per_token(gpt3) == saved
    assert training_flops_per_token(sparse(8), seq_len=4) == training_flops_per_token(
        ModelConfig.preset("gpt2-tiny"), seq_len=4)  # a window wider than the sequence is dense
    cluster = Cluster(gpus=16, gpu_mem_gib=80)
    assert plan(gpt3, cluster, 512)[0].step_seconds < plan(dense, cluster, 512)[0].step_seconds


def test_hugging_face_export_is_refused_for_a_sparse_model():
    with pytest.raises(ValueError, match="gpt3_sparse.*GPT2LMHeadModel cannot express"):
        GPT(sparse(8)).to_hf()
