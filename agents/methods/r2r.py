"""R2R (Roads to Rome, arXiv 2505.21600): a small policy writes, a large one writes only the tokens that matter.

Labelling. The large policy answers each task greedily. The small policy is teacher-forced along that
answer; where its greedy next token differs from the large one's, the large policy continues greedily
from the prefix plus the small token, and the episode's own verifier scores the result. The position
is *divergent* when that outcome (correct or not) differs from the large policy's own answer, else
*neutral*; matching positions are *identical*. Two differences from the paper, both deliberate: the
paper continues for one sentence and asks an LLM judge whether meaning changed, here the verifier
decides on the whole continuation (checkable, no judge, but a divergence that happens to reach the
same verdict is labelled neutral); and the continuation from the large token is not re-run, since
under greedy decoding it is the large policy's own answer.

Routed generation (`RoutedEngine`). The small model decodes every token; the router looks at its
state and, when it fires, the large model produces that token instead. The large model keeps its own
KV cache and on each call prefills only the tokens written since its previous call (the paper's
`extend_step`); the chosen token then goes back into the small model's cache and it continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DynamicCache

import thinkgym  # noqa: F401  (registers the environment ids)
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env

from ..policy import Policy, cache_kwargs
from ..rollout.engine import Completion, GenerationRequest
from ..rollout.hf.engine import DecodeRow, HFEngine, left_pad, per_request, request_rows
from ..rollout.sampling import TorchSampler, force_prefixes, sample_tokens
from .router import RoutingRule

IDENTICAL, NEUTRAL, DIVERGENT = 0, 1, 2


def n_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def _check_pair(small: Policy, large: Policy) -> None:
    if len(small.tokenizer) != len(large.tokenizer) or small.eos_token_id != large.eos_token_id:
        raise ValueError("the small and large policies must share one tokenizer (same vocabulary and EOS); got "
                         f"{len(small.tokenizer)}/{small.eos_token_id} and {len(large.tokenizer)}/{large.eos_token_id} tokens/EOS")


def _last_state(model: torch.nn.Module, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position final hidden state and its logits, without the LM head on the other positions."""
    h = model.base_model(**kwargs).last_hidden_state[:, -1]
    return h, model.get_output_embeddings()(h)


# -- labelling ------------------------------------------------------------------------------------

class _Verifier:
    """Scores a whole response to seed's task by one step of the episode (single-context envs)."""

    def __init__(self, env_id: str, tokenizer: Any, env_kwargs: dict | None):
        self.env = make_env(env_id, **{"tokenizer": tokenizer, **(env_kwargs or {})}).unwrapped

    def start(self, seed: int) -> dict:
        return self.env.reset(seed=seed)[1]

    def correct(self, seed: int, ids: list[int], ended: bool) -> bool:
        self.env.reset(seed=seed)
        _, _, term, trunc, info = self.env.step(TokenAction.from_ids(self.env.tokenizer, ids, ended))
        if not (term or trunc):
            raise ValueError("labelling needs episodes that one response ends (a single-context env without stop strings)")
        return bool(info.get("correct", False))


@torch.no_grad()
def label_tokens(small: Policy, large: Policy, env_id: str, seeds: Sequence[int], env_kwargs: dict | None = None,
                 top_k: int = 100, batch_size: int = 64) -> dict[str, Any]:
    """Router training data along the large policy's greedy answers to `seeds`: per response token the small
    model's features (hidden, token_emb, topk_logits), `label` (divergent or not), `kind` (0 identical,
    1 neutral, 2 divergent), `seed`, `position`, `small_token`, `large_token`; plus `large_correct` per seed."""
    _check_pair(small, large)
    ver = _Verifier(env_id, small.tokenizer, env_kwargs)
    eos = small.eos_token_id
    starts = [ver.start(s) for s in seeds]
    large_engine = HFEngine(large, max_batch_size=batch_size)
    answers = [c[0] for c in large_engine.generate([GenerationRequest(i["prompt_token_ids"], i["max_new_tokens"], i["stop"], 0.0)
                                                    for i in starts])]
    large_ok = [ver.correct(s, a.token_ids, a.finish_reason == "eos") for s, a in zip(seeds, answers)]
    cols: dict[str, list] = {k: [] for k in ("hidden", "token_emb", "topk_logits", "seed", "position", "small_token", "large_token")}
    emb = small.model.get_input_embeddings()
    for b in range(0, len(seeds), batch_size):  # teacher-force the small model along the large answers
        chunk = list(range(b, min(b + batch_size, len(seeds))))
        seqs = [starts[i]["prompt_token_ids"] + answers[i].token_ids + ([eos] if answers[i].finish_reason == "eos" else []) for i in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
        hid = small.model.base_model(input_ids=ids.to(small.device), attention_mask=mask.to(small.device)).last_hidden_state
        for r, i in enumerate(chunk):
            p0 = len(starts[i]["prompt_token_ids"])
            h = hid[r, p0 - 1:len(seqs[r]) - 1]
            logits = small.model.get_output_embeddings()(h).float()
            pred = logits.argmax(-1)
            cols["hidden"].append(h.float().cpu())
            cols["token_emb"].append(emb(pred).float().cpu())
            cols["topk_logits"].append(logits.topk(min(top_k, logits.shape[-1]), -1).values.cpu())
            cols["small_token"].append(pred.cpu())
            cols["large_token"].append(torch.tensor(seqs[r][p0:]))
            cols["seed"].append(torch.full((len(h),), int(seeds[i])))
            cols["position"].append(torch.arange(len(h)))
    out = {k: torch.cat(v) for k, v in cols.items()}
    kind = torch.full_like(out["seed"], IDENTICAL)
    where = {int(s): i for i, s in enumerate(seeds)}
    mism = (out["small_token"] != out["large_token"]).nonzero().squeeze(-1).tolist()
    reqs, todo = [], []
    for m in mism:  # the small token's outcome: the large policy continues greedily after it
        i, j, tok = where[int(out["seed"][m])], int(out["position"][m]), int(out["small_token"][m])
        prefix = answers[i].token_ids[:j] + ([] if tok == eos else [tok])
        left = starts[i]["max_new_tokens"] - len(prefix)
        if tok == eos or left <= 0:
            same = ver.correct(seeds[i], prefix, tok == eos) == large_ok[i]
            kind[m] = NEUTRAL if same else DIVERGENT
        else:
            reqs.append(GenerationRequest(starts[i]["prompt_token_ids"] + prefix, left, starts[i]["stop"], 0.0))
            todo.append((m, i, prefix))
    for (m, i, prefix), c in zip(todo, large_engine.generate(reqs)):
        same = ver.correct(seeds[i], prefix + c[0].token_ids, c[0].finish_reason == "eos") == large_ok[i]
        kind[m] = NEUTRAL if same else DIVERGENT
    out.update(kind=kind, label=(kind == DIVERGENT).long(), large_correct=torch.tensor(large_ok))
    return out


def save_labels(labels: dict[str, Any], path: str | Path) -> None:
    torch.save(labels, path)


def load_labels(path: str | Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def select_seeds(labels: dict[str, Any], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
    """The per-token rows of `seeds` (train/validation/test splits by task, never within one answer)."""
    keep = torch.isin(labels["seed"], torch.tensor(list(seeds)))
    return {k: v[keep] for k, v in labels.items() if torch.is_tensor(v) and v.shape[:1] == keep.shape}


# -- routed generation ------------------------------------------------------------------------------

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
        _check_pair(small, large)
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
        hidden, logits = _last_state(small, input_ids=seq, attention_mask=mask, position_ids=pos, **cache_kwargs(small.base_model, scache), use_cache=True)
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
            hidden, logits = _last_state(small, input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=pos,
                                         **cache_kwargs(small.base_model, scache), use_cache=True)
