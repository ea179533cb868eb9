"""The reference megagpt's GPT-2 124M step is timed against: nanoGPT's model, trained the way
nanoGPT trains it (bf16 autocast, fused AdamW, gradient clipping), on the same batches."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from deepspeed.accelerator import get_accelerator

from bench.gpu.measure import free_memory, timed_steps
from megagpt.config import ModelConfig
from megagpt.training.engine import on_cpu


class ReferenceBlock(nn.Module):
    """nanoGPT's block: pre-LN, SDPA causal attention, tanh-GELU MLP."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.c_attn, self.c_proj = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT-2: tied embedding, the vocabulary padded as megagpt pads it (nanoGPT's 50304)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(c.padded_vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(ReferenceBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def reference_step_seconds(model_cfg: ModelConfig, batches: list[torch.Tensor], warmup: int,
                           compiled: bool) -> float:
    device, on_gpu = get_accelerator().device_name(), not on_cpu()
    free_memory()
    torch.manual_seed(0)
    model = ReferenceGPT(model_cfg).to(device)
    if compiled:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=on_gpu)

    def step(batch: torch.Tensor) -> None:
        batch = batch.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=on_gpu):
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_steps(step, batches, warmup)[0]
