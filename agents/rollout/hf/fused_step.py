"""The forward of Llama-family models over the slot cache, with each layer's small kernels fused
by `torch.compile`.

transformers' layers run about 40 kernels each per decode step (RMSNorm alone is 7, the rotary
embedding 10), and inside a CUDA graph at batch 256 on a 1.5B model those small kernels cost about
as much as the matmuls (`benchmarks/RESULTS.md`). `FusedStep` computes the same forward from the
model's own modules as two compiled pieces per layer: before attention (residual, norm, q/k/v,
rotary) and after it (o_proj, residual, norm, MLP). Prefill chunks run through it too, where each
unfused kernel would pass over every prompt token. The cache write and attention stay outside the
compiled code on purpose: compiled whole steps that wrote the cache ran 2.2x slower. The pieces are
free functions with the weights as arguments, compiled with dynamic shapes, so every layer, batch
bucket and model size shares one compiled graph per dtype.

On the CPU the pieces run eagerly, which is how the tests check them against transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .compiling import compiled

FAMILIES = ("llama", "qwen2", "qwen3")  # whose decoder layers compute exactly what the pieces below do


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, cast back, then scale."""
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def before_attention(x: torch.Tensor, delta: torch.Tensor | None, norm: torch.Tensor, eps: float, wqkv: torch.Tensor,
                     bqkv: torch.Tensor | None, kv_heads: int, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None,
                     cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The residual stream [rows, L, hidden] plus the last layer's MLP output `delta` -> that sum, and
    q, k, v as [rows, heads, L, head_dim], rotated."""
    x = x if delta is None else x + delta
    rows, length, dim = x.shape[0], x.shape[1], cos.shape[-1]
    h = rms_norm(x, norm, eps)
    qkv = F.linear(h, wqkv, bqkv).view(rows, length, -1, dim)
    q_heads = qkv.shape[2] - 2 * kv_heads
    q, k, v = qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads], qkv[:, :, q_heads + kv_heads:]
    if q_norm is not None:  # Qwen3 normalises each head
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x, rotary(q.transpose(1, 2), cos, sin), rotary(k.transpose(1, 2), cos, sin), v.transpose(1, 2)


def after_attention(x: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, norm: torch.Tensor, eps: float,
                    wgu: torch.Tensor, bgu: torch.Tensor | None, wd: torch.Tensor, bd: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream after o_proj, and the SiLU MLP's output, which the next piece adds to it
    (so the add shares a kernel with the next norm); `attn` is [rows, L, heads, head_dim]."""
    x = x + F.linear(attn.reshape(x.shape[0], x.shape[1], -1), wo, bo)
    gate, up = F.linear(rms_norm(x, norm, eps), wgu, bgu).chunk(2, dim=-1)
    return x, F.linear(F.silu(gate) * up, wd, bd)


def final_logits(x: torch.Tensor, delta: torch.Tensor, norm: torch.Tensor, eps: float, w: torch.Tensor,
                 b: torch.Tensor | None) -> torch.Tensor:
    """Logits [rows, vocab] at the last position only."""
    return F.linear(rms_norm(x[:, -1] + delta[:, -1], norm, eps), w, b)


def supports_fused(model: PreTrainedModel) -> bool:
    """Whether `FusedStep` computes this model's step: a Llama/Qwen2/Qwen3 with SiLU and plain
    `nn.Linear` projections (not adapters or quantized layers, whose weights mean something else)."""
    cfg = model.config.get_text_config()
    if cfg.model_type not in FAMILIES or getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return False
    for layer in inner.layers:
        attn = [getattr(layer.self_attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        mlp = [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not torch.nn.Linear for m in attn + mlp):
            return False
        if len({m.bias is None for m in attn[:3]}) > 1 or len({m.bias is None for m in mlp[:2]}) > 1:
            return False  # the packed projections need all or none of their biases
    return True


def packed(linears: list[torch.nn.Linear], out: tuple[torch.Tensor, torch.Tensor | None] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layers' weights (and biases) stacked into one matrix, into `out` if given."""
    w = torch.cat([m.weight for m in linears], out=None if out is None else out[0])
    if linears[0].bias is None:
        return w, None
    return w, torch.cat([m.bias for m in linears], out=None if out is None else out[1])


PIECES = {f: compiled(f) for f in (before_attention, after_attention, final_logits)}  # compiled once, shared by every engine


class FusedStep:
    """A forward over a `SlotCache`: ids [rows, L] at `pos`, attending with `attention` under the
    additive `bias` -> the logits at the last position. It serves decode steps (L = 1) and chunks
    of a prefill.

    Each layer's q/k/v and gate/up projections run as one matmul each, from packed copies of their
    weights (1.7 GB more memory at the 1.5B shape): at decode batch sizes these matmuls are small,
    and one larger matmul uses the memory bandwidth better than three. `refresh` recopies them, and
    must run after the weights change. `compile` (use it on a GPU) turns the pieces into fused
    kernels; without it they run eagerly."""

    def __init__(self, model: PreTrainedModel, compile: bool):
        self.model = model
        wrap = PIECES.get if compile else (lambda f: f)
        self.before, self.after, self.logits = wrap(before_attention), wrap(after_attention), wrap(final_logits)
        self.kv_heads = model.config.get_text_config().num_key_value_heads
        with torch.no_grad():
            self.packs = [[packed(group) for group in self._groups(layer)] for layer in model.model.layers]

    @staticmethod
    def _groups(layer: torch.nn.Module) -> tuple[list[torch.nn.Linear], list[torch.nn.Linear]]:
        """The projections that run as one matmul: q/k/v, and gate/up."""
        return [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], [layer.mlp.gate_proj, layer.mlp.up_proj]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the current weights into the packed matrices, in place (CUDA graphs hold their addresses)."""
        for layer, packs in zip(self.model.model.layers, self.packs):
            for group, out in zip(self._groups(layer), packs):
                packed(group, out=out)

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, cache, attention, bias: torch.Tensor) -> torch.Tensor:
        inner = self.model.model
        x, delta = inner.embed_tokens(ids), None
        cos, sin = inner.rotary_emb(x, pos)
        for i, (layer, (qkv, gate_up)) in enumerate(zip(inner.layers, self.packs)):
            a, ln1, ln2 = layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm
            qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            x, q, k, v = self.before(x, delta, ln1.weight, ln1.variance_epsilon, *qkv, self.kv_heads,
                                     None if qn is None else qn.weight, None if kn is None else kn.weight, cos, sin)
            k, v = cache.update(k, v, i)
            out, _ = attention(a, q, k, v, bias, scaling=a.scaling)
            x, delta = self.after(x, out, a.o_proj.weight, a.o_proj.bias, ln2.weight, ln2.variance_epsilon, *gate_up,
                                  layer.mlp.down_proj.weight, layer.mlp.down_proj.bias)
        return self.logits(x, delta, inner.norm.weight, inner.norm.variance_epsilon, self.model.lm_head.weight, self.model.lm_head.bias)
