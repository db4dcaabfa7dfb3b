"""Per-token log-probabilities of rows under a model: what SFT, GRPO and REDI all train on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .. import lora
from ..types import Row


@dataclass
class RowBatch:
    """Rows right-padded into tensors; completion-aligned tensors are [B, Lc]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor       # completion token ids
    loss_mask: torch.Tensor     # 1 where the loss counts
    old_logprobs: torch.Tensor
    prompt_lens: list[int]


def pad_rows(rows: list[Row], pad_id: int, device: torch.device) -> RowBatch:
    L = max(len(r.input_ids) for r in rows)
    Lc = max(r.completion_len for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    tgt = torch.full((len(rows), Lc), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), Lc))
    old = torch.zeros((len(rows), Lc))
    for i, r in enumerate(rows):
        n, c = len(r.input_ids), r.completion_len
        ids[i, :n] = torch.tensor(r.input_ids)
        att[i, :n] = 1
        tgt[i, :c] = torch.tensor(r.input_ids[r.prompt_len:])
        mask[i, :c] = torch.tensor(r.loss_mask, dtype=torch.float)
        old[i, :c] = torch.tensor(r.old_logprobs, dtype=torch.float)
    return RowBatch(ids.to(device), att.to(device), tgt.to(device), mask.to(device), old.to(device), [r.prompt_len for r in rows])


LOGITS_PER_CHUNK = 1 << 27
"""Logits computed at once (fp32: 512 MiB): 883 tokens of R1-Distill-Qwen's 151,936-token vocabulary,
and a whole micro-batch of the tiny model, which so keeps its exact pre-chunking path."""


def pad_rows_like(per_row: list[torch.Tensor], indices: Iterable[int], like: torch.Tensor) -> torch.Tensor:
    """Right-pad per-row token tensors (row `j` of `per_row` for each j in `indices`) into the shape of `like`
    (padding = 1): per-token weights lined up with a padded batch."""
    out = torch.ones_like(like)
    for i, j in enumerate(indices):
        t = per_row[j]
        out[i, : t.numel()] = t.to(like.device, like.dtype)
    return out


def completion_logprobs(model: torch.nn.Module, batch: RowBatch, temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True, logits_per_chunk: int = LOGITS_PER_CHUNK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) of each completion token, [B, Lc], and optionally the entropy.

    The [B, L, V] logits are never held when they exceed `logits_per_chunk`: for this forward the
    model's output layer is a `CompletionHead`, which turns the last hidden states into the completion
    tokens' log-probs and entropies a chunk at a time. The model is still called as a whole, so DDP's
    and FSDP's hooks run around it. With `entropy_grad=False` the entropy is only for logging and keeps
    no autograd buffer."""
    B, Lc = batch.targets.shape
    device = batch.input_ids.device
    # the hidden state predicting completion token j of row i sits at position prompt_len_i - 1 + j
    pos = torch.tensor(batch.prompt_lens, device=device).unsqueeze(1) - 1 + torch.arange(Lc, device=device)
    pos = pos.clamp(max=batch.input_ids.shape[1] - 1)
    head = CompletionHead(pos, batch.targets, temperature, with_entropy, entropy_grad, logits_per_chunk)
    with head.replacing_output_layer(model):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.view(B, Lc, -1)
    if not with_entropy:
        return out[..., 0], None
    return out[..., 0], out[..., 1] if entropy_grad else out[..., 1].detach()


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside `model`: DDP's module, a peft model's base, or `model` itself."""
    from torch.nn.parallel import DistributedDataParallel

    return lora.base_model(model.module if isinstance(model, DistributedDataParallel) else model)


class CompletionHead(torch.nn.Module):
    """Stands in for a causal LM's output layer during one forward: from the last hidden states
    [B, L, H] it returns [B·Lc, 1 or 2], each completion token's log-prob (and entropy); not a view,
    which FSDP2 warns about in a module's output.

    When the batch's logits fit in `logits_per_chunk` they are computed at every position and then
    picked, exactly as the model's own logits were (same sums, so CPU results do not move). Beyond,
    the completion positions' hidden states are picked first and go through the output layer, the
    log-softmax and the entropy in chunks of `logits_per_chunk // V` tokens, each under
    `torch.utils.checkpoint`, so that backward recomputes one chunk's logits at a time: the peak is
    one chunk's, as in fused linear cross-entropy kernels. It is torch rather than Liger Kernel's fused
    losses because those fuse the loss itself (a few GRPO variants), where every loss of `losses.py`
    takes per-token log-probs, and because the CPU must run the same path as the GPU."""

    def __init__(self, pos: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool, entropy_grad: bool,
                 logits_per_chunk: int):
        super().__init__()
        if logits_per_chunk < 1:
            raise ValueError(f"logits_per_chunk must be a positive number of logits; got {logits_per_chunk}")
        self.pos, self.targets, self.temperature = pos, targets, temperature
        self.with_entropy, self.entropy_grad, self.logits_per_chunk = with_entropy, entropy_grad, logits_per_chunk
        self.output_layer: list[torch.nn.Module] = []  # a list: the model's layer stays registered where it is, not here

    @contextmanager
    def replacing_output_layer(self, model: torch.nn.Module) -> Iterator[None]:
        lm = causal_lm(model)
        layer = lm.get_output_embeddings()
        if layer is None:
            raise ValueError(f"{type(lm).__name__} has no output embeddings (lm_head): it is not a causal LM")
        self.output_layer = [layer]
        lm.set_output_embeddings(self)
        try:
            yield
        finally:
            lm.set_output_embeddings(layer)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.output_layer[0]
        (B, Lc), V = self.targets.shape, layer.weight.shape[0]
        if B * hidden.shape[1] * V <= self.logits_per_chunk:
            logits = layer(hidden)
            return self.token_stats(logits.gather(1, self.pos.unsqueeze(-1).expand(B, Lc, V)).flatten(0, 1), self.targets.flatten())
        picked = hidden.gather(1, self.pos.unsqueeze(-1).expand(B, Lc, hidden.shape[-1])).flatten(0, 1)
        targets, n = self.targets.flatten(), max(1, self.logits_per_chunk // V)
        recompute = torch.is_grad_enabled() and picked.requires_grad
        parts = [checkpoint(self.chunk_stats, picked[i:i + n], targets[i:i + n], use_reentrant=False) if recompute
                 else self.chunk_stats(picked[i:i + n], targets[i:i + n]) for i in range(0, B * Lc, n)]
        return torch.cat(parts)

    def chunk_stats(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.token_stats(self.output_layer[0](hidden), targets)

    def token_stats(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[..., 1 or 2]: log softmax(logits / T) at `targets`, then the entropy if asked for."""
        logits = logits.float()
        if self.temperature > 0 and self.temperature != 1.0:
            logits = logits / self.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, targets.unsqueeze(-1))
        if not self.with_entropy:
            return logp
        with torch.set_grad_enabled(self.entropy_grad and torch.is_grad_enabled()):
            ent = -(logp_all.exp() * logp_all).sum(-1, keepdim=True)
        return torch.cat([logp, ent], dim=-1)
