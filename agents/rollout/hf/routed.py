"""Routed generation (R2R, arXiv 2505.21600): a small policy decodes every token; a router looks at its state
and, when it fires, a large policy writes that token instead. The large model keeps its own KV cache and on
each call prefills only the tokens written since its previous call (the paper's `extend_step`); the chosen
token then goes back into the small model's cache and it continues. Labelling and router training are
`methods/r2r.py` and `methods/router.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from ...policy import Policy, cache_kwargs
from ..engine import Completion, GenerationRequest
from ..sampling import TorchSampler, force_prefixes, sample_tokens
from .engine import DecodeRow, left_pad, per_request, request_rows


class RoutingRule(Protocol):
    """What routed generation asks at each step: which rows go to the large model (`methods/router.py`'s
    `Router` and `RateRouter`)."""

    def decide(self, hidden: torch.Tensor, token_emb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Bool [B]: route row b. `hidden`/`token_emb` [B, H], `logits` the full [B, V] next-token logits."""


def n_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def check_pair(small: Policy, large: Policy) -> None:
    if len(small.tokenizer) != len(large.tokenizer) or small.eos_token_id != large.eos_token_id:
        raise ValueError("the small and large policies must share one tokenizer (same vocabulary and EOS); got "
                         f"{len(small.tokenizer)}/{small.eos_token_id} and {len(large.tokenizer)}/{large.eos_token_id} tokens/EOS")


def last_state(model: torch.nn.Module, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position final hidden state and its logits, without the LM head on the other positions."""
    h = model.base_model(**kwargs).last_hidden_state[:, -1]
    return h, model.get_output_embeddings()(h)



@dataclass
class RoutedCompletion(Completion):
    """A completion with, per token, whether the large model wrote it (its log-prob is then the large one's)."""

    routed: list[bool] = field(default_factory=list)


@dataclass
class _Row(DecodeRow):
    routed: list[bool] = field(default_factory=list)


class RoutedEngine(TorchSampler):
    """An `Engine` that decodes with `small` and hands the router's tokens to `large`.

    `policy` is the small policy (the collector reads its tokenizer). `stats` accumulates over calls:
    tokens, routed tokens, large-model calls and wall time; `report()` summarises them.
    """

    def __init__(self, small: Policy, large: Policy, router: RoutingRule, max_batch_size: int = 256, seed: int | None = None):
        check_pair(small, large)
        self.policy, self.large, self.router = small, large, router
        self.max_batch_size = max_batch_size
        super().__init__(small.device, seed)
        self.stats = {"tokens": 0, "routed": 0, "large_calls": 0, "wall_s": 0.0}

    logprobs_are_trainers = False  # tokens of the large model are in its rows

    def sync_weights(self) -> None:
        """Nothing to do: both models are read directly."""

    def close(self) -> None:
        """Nothing held beyond the two models."""

    def report(self) -> dict[str, float]:
        """Routed fraction, average active parameters per token (small + router every token, large on
        routed ones: R2R's accounting) and throughput since construction."""
        s = self.stats
        frac = s["routed"] / max(1, s["tokens"])
        small_p, large_p = n_params(self.policy.model), n_params(self.large.model)
        return {"routed_frac": frac, "avg_active_params": small_p + n_params(self.router) + frac * large_p,
                "small_params": small_p, "large_params": large_p, "tokens": s["tokens"], "large_calls": s["large_calls"],
                "wall_s": s["wall_s"], "tokens_per_s": s["tokens"] / max(s["wall_s"], 1e-9)}

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[RoutedCompletion]]:
        t0 = time.perf_counter()
        for req in requests:
            self.policy.check_prompt(len(req.prompt_ids), req.max_new_tokens)
            self.large.check_prompt(len(req.prompt_ids), req.max_new_tokens)
        rows = request_rows(requests, _Row)
        for i in range(0, len(rows), self.max_batch_size):
            self._run(rows[i:i + self.max_batch_size])
        self.stats["wall_s"] += time.perf_counter() - t0
        tok = self.policy.tokenizer
        return per_request(requests, rows, lambda r: RoutedCompletion(r.out, tok.decode(r.out, skip_special_tokens=False), r.logps,
                                                                       r.finish, r.eos_logp, r.routed))

    def _run(self, rows: list[_Row]) -> None:
        small, large, dev = self.policy.model, self.large.model, self.policy.device
        eos, tok = self.policy.eos_token_id, self.policy.tokenizer
        seq, mask, temp, top_p = left_pad(rows, tok.pad_token_id, dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        scache, lcache, synced = DynamicCache(), DynamicCache(), 0  # `synced`: columns the large cache holds
        hidden, logits = last_state(small, input_ids=seq, attention_mask=mask, position_ids=pos, **cache_kwargs(small.base_model, scache), use_cache=True)
        live, step = list(range(len(rows))), 0
        while live:
            tokens, logps = sample_tokens(logits, temp, top_p, self.generator)
            fire = self.router.decide(hidden, small.get_input_embeddings()(tokens), logits).to(dev)
            forced = force_prefixes((rows[ri].req.prefix_ids for ri in live), step, tokens, logps, logits, temp)
            if forced is not None:  # forced prefix tokens are never routed; they are scored under the small model
                fire[forced] = False
            host_fire = fire.tolist()
            if any(host_fire):  # the large model catches up on the new columns and writes the routed tokens
                lpos = (mask.cumsum(-1) - 1).clamp(min=0)
                ldev = self.large.device
                llogits = large(input_ids=seq[:, synced:].to(ldev), attention_mask=mask.to(ldev), position_ids=lpos[:, synced:].to(ldev),
                                **cache_kwargs(large, lcache), use_cache=True, logits_to_keep=1).logits[:, -1].to(dev)
                synced = seq.shape[1]
                ltok, llogp = sample_tokens(llogits[fire], temp[fire], top_p[fire], self.generator)
                tokens[fire], logps[fire] = ltok, llogp
                self.stats["large_calls"] += 1
            host_tokens, host_logps = tokens.tolist(), logps.tolist()  # one device sync per step
            keep = []
            for b, ri in enumerate(live):
                r = rows[ri]
                alive = r.add(host_tokens[b], host_logps[b], eos, tok)
                if r.finish != "eos":  # the token was kept
                    r.routed.append(host_fire[b])
                    self.stats["tokens"] += 1
                    self.stats["routed"] += host_fire[b]
                if alive:
                    keep.append(b)
            step += 1
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave both caches
                sel = torch.tensor(keep, device=dev)
                scache.batch_select_indices(sel)
                if synced:
                    lcache.batch_select_indices(sel.to(self.large.device))
                tokens, seq, mask, pos, temp, top_p = tokens[sel], seq[sel], mask[sel], pos[sel], temp[sel], top_p[sel]
                live = [live[b] for b in keep]
            seq = torch.cat([seq, tokens.unsqueeze(-1)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            hidden, logits = last_state(small, input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=pos,
                                         **cache_kwargs(small.base_model, scache), use_cache=True)
