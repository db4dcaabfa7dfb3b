"""Per-token log-probabilities of rows under a model: what SFT, GRPO and REDI all train on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def completion_logprobs(model: torch.nn.Module, batch: RowBatch, temperature: float = 1.0,
                        with_entropy: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) of each completion token, [B, Lc], and optionally the entropy.

    With `entropy_grad=False` the entropy is only for logging and keeps no [B, Lc, V] autograd buffer."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    B, Lc = batch.targets.shape
    # the logit predicting completion token j of row i sits at position prompt_len_i - 1 + j
    pos = torch.tensor(batch.prompt_lens, device=logits.device).unsqueeze(1) - 1 + torch.arange(Lc, device=logits.device)
    pos = pos.clamp(max=logits.shape[1] - 1)
    sel = logits.gather(1, pos.unsqueeze(-1).expand(B, Lc, logits.shape[-1])).float()
    if temperature > 0 and temperature != 1.0:
        sel = sel / temperature
    logp_all = torch.log_softmax(sel, dim=-1)
    logp = logp_all.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent
