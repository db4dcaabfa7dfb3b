"""Rejection-sampling data: run a policy on any environment and write its traces to a jsonl.

Each line is one episode: the prompt and response as text and as token ids, reward, `correct`,
seed and sample index, so it feeds `thinkgym redi` / `thinkgym sft` token-exactly. Episodes of
several steps (Delethink chunks) also keep every step's prompt and response ids under `steps`.
All samples of a seed are written together, so an interrupted run resumes by skipping the seeds
already in the file (a seed cut off mid-write is sampled again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..rollout.collector import Collector
from ..rollout.engine import Engine
from ..types import Episode


def done_seeds(path: str | Path, n: int) -> set[int]:
    """Seeds already in the file. A run cut off mid-write leaves a torn line or a last seed with
    fewer than `n` samples: the file is truncated back to the last complete seed."""
    path = Path(path)
    if not path.exists():
        return set()
    seeds: set[int] = set()
    offset = good_end = count = 0
    current = None
    with open(path, "rb") as f:
        for line in f:
            try:
                seed = int(json.loads(line)["seed"])
            except (ValueError, KeyError, TypeError):
                break
            count = count + 1 if seed == current else 1
            current, offset = seed, offset + len(line)
            if count >= n:
                seeds.add(seed)
                good_end = offset
    if good_end < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return seeds


def episode_record(ep: Episode, sample: int, env_id: str, tokenizer: Any) -> dict[str, Any]:
    first = ep.steps[0]
    response_ids = [t for s in ep.steps for t in s.action_ids]
    rec = {"env": env_id, "seed": ep.seed, "sample": sample,
           "prompt": tokenizer.decode(first.prompt_ids, skip_special_tokens=False),
           "response": "".join(tokenizer.decode(s.action_ids, skip_special_tokens=False) for s in ep.steps),
           "prompt_ids": list(first.prompt_ids), "response_ids": response_ids,
           "reward": float(ep.reward), "correct": bool(ep.info.get("correct", False)),
           "answer": None if ep.info.get("answer") is None else str(ep.info["answer"]),
           "eos": ep.steps[-1].finish_reason == "eos", "truncated": bool(ep.truncated)}
    if len(ep.steps) > 1:
        rec["steps"] = [{"prompt_ids": list(s.prompt_ids), "response_ids": list(s.action_ids)} for s in ep.steps]
    return rec


def sample_traces(engine: Engine, env_id: str, seeds: Sequence[int], out: str | Path, n: int = 4,
                  env_kwargs: dict[str, Any] | None = None, temperature: float = 1.0, top_p: float = 1.0,
                  seeds_per_batch: int = 32) -> dict[str, float]:
    """Append `n` sampled episodes per seed not yet in `out`; return counts over the whole file's new part."""
    if n < 1 or seeds_per_batch < 1:
        raise ValueError(f"n and seeds_per_batch must be >= 1; got n={n}, seeds_per_batch={seeds_per_batch}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_seeds(out, n)
    todo = [int(s) for s in seeds if int(s) not in skip]
    collector = Collector(env_id, engine, env_kwargs, group_size=n, temperature=temperature, top_p=top_p)
    tok = engine.policy.tokenizer
    written = correct = 0
    for i in range(0, len(todo), seeds_per_batch):
        batch = collector.collect(todo[i:i + seeds_per_batch])
        recs = [episode_record(ep, k % n, env_id, tok) for k, ep in enumerate(batch.episodes)]
        with open(out, "a") as f:  # one write per batch: a seed's samples land together
            f.write("".join(json.dumps(r) + "\n" for r in recs))
        written += len(recs)
        correct += sum(r["correct"] for r in recs)
        print(f"sampled {min(i + seeds_per_batch, len(todo))}/{len(todo)} seeds, accuracy so far {correct / written:.3f}", flush=True)
    return {"skipped_seeds": len(seeds) - len(todo), "new_seeds": len(todo), "new_traces": written,
            "new_accuracy": correct / written if written else float("nan")}
