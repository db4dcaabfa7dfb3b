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

Routed generation is `RoutedEngine`, an engine beside the hf one (`rollout/hf/routed.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

import thinkgym  # noqa: F401  (registers the environment ids)
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env

from ..policy import Policy
from ..rollout.engine import GenerationRequest
from ..rollout.hf.engine import HFEngine
from ..rollout.hf.routed import check_pair

IDENTICAL, NEUTRAL, DIVERGENT = 0, 1, 2


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
    check_pair(small, large)
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
