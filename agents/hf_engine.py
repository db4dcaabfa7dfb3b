"""The `hf` rollout engine: batched sampling with a KV cache on any transformers causal LM.

It is a plain decode loop rather than `model.generate` because rollouts need what `generate`
does not give together: a budget and stop strings per request, the log-probability of each
sampled token, forced response prefixes, and finished rows leaving the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .engine import Completion, GenerationRequest, find_stop
from .policy import Policy


@dataclass
class DecodeRow:
    """One sequence being decoded: what it wrote so far, and why it stopped once it has."""

    prompt: list[int]
    req: GenerationRequest
    out: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    finish: str | None = None

    def add(self, token: int, logp: float, eos: int, tokenizer) -> bool:
        """Record a sampled token (EOS is not kept); return True while the row keeps generating."""
        if token == eos and not self.req.ignore_eos:
            self.finish = "eos"
            return False
        self.out.append(token)
        self.logps.append(logp)
        if self.req.stop and find_stop(tokenizer.decode(self.out[-32:], skip_special_tokens=False), self.req.stop) is not None:
            self.finish = "stop"
        elif len(self.out) >= self.req.max_new_tokens:
            self.finish = "length"
        return self.finish is None


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it with its log-probability under softmax(logits / T).

    Rows with temperature 0 are greedy and report log softmax(logits). Top-p truncates the
    sampling distribution only, not the reported log-probability.
    """
    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)
    logp = torch.log_softmax(scaled, dim=-1)
    probs = logp.exp()
    if bool((top_p < 1).any()):
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p.unsqueeze(-1)
        probs = probs.scatter(-1, idx, sorted_p.masked_fill(drop, 0.0))
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    tokens = torch.where(greedy, logits.argmax(-1), tokens)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class HFEngine:
    """Generates with the policy's own model, so its weights are always current."""

    def __init__(self, policy: Policy, max_batch_size: int = 256, seed: int | None = None):
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.generator = torch.Generator(device=policy.device)
        if seed is not None:
            self.generator.manual_seed(seed)

    def sync_weights(self) -> None:
        """Nothing to do: the engine reads the training model's parameters directly."""

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        rows = []
        for req in requests:
            self.policy.check_prompt(len(req.prompt_ids), req.max_new_tokens)
            rows += [DecodeRow(list(req.prompt_ids), req) for _ in range(req.n)]
        for i in range(0, len(rows), self.max_batch_size):
            self._run(rows[i:i + self.max_batch_size])
        tok = self.policy.tokenizer
        done = iter(rows)
        return [[Completion(r.out, tok.decode(r.out, skip_special_tokens=False), r.logps, r.finish) for r in
                 (next(done) for _ in range(req.n))] for req in requests]

    def _run(self, rows: list[DecodeRow]) -> None:
        model, dev, eos = self.policy.model, self.policy.device, self.policy.eos_token_id
        pad = self.policy.tokenizer.pad_token_id
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding keeps every row's last token in the last column
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        temp = torch.tensor([r.req.temperature for r in rows], device=dev, dtype=torch.float)
        top_p = torch.tensor([r.req.top_p for r in rows], device=dev, dtype=torch.float)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1]
        live = list(range(len(rows)))  # batch position -> row index
        step = 0
        while live:
            tokens, logps = sample_tokens(logits, temp, top_p, self.generator)
            forced = [(b, rows[ri].req.prefix_ids[step]) for b, ri in enumerate(live) if step < len(rows[ri].req.prefix_ids)]
            if forced:  # forced prefix tokens replace the samples and are scored instead
                fb = torch.tensor([b for b, _ in forced], device=dev)
                ft = torch.tensor([t for _, t in forced], device=dev)
                scale = torch.where(temp[fb] > 0, temp[fb], torch.ones_like(temp[fb])).unsqueeze(-1)
                tokens[fb] = ft
                logps[fb] = torch.log_softmax(logits[fb].float() / scale, -1).gather(-1, ft.unsqueeze(-1)).squeeze(-1)
            host_tokens, host_logps = tokens.tolist(), logps.tolist()  # one device sync per step
            tok = self.policy.tokenizer
            keep = [b for b, ri in enumerate(live) if rows[ri].add(host_tokens[b], host_logps[b], eos, tok)]
            step += 1
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                tokens, mask, pos, temp, top_p = tokens[sel], mask[sel], pos[sel], temp[sel], top_p[sel]
                live = [live[b] for b in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            logits = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=pos,
                           past_key_values=cache, use_cache=True).logits[:, -1]
