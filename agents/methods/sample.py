"""Rejection-sampling data and step-wise trajectories: run a policy on any environment and write a jsonl.

`format="episodes"`: each line is one episode: the prompt and response as text and as token ids,
reward, `correct`, seed and sample index, so it feeds `thinkgym redi` / `thinkgym sft` token-exactly.
Episodes of several steps (Delethink chunks) also keep every step's prompt and response ids under `steps`.

`format="steps"`: each line is one step of one trajectory (`step_records`; the README's contract section
describes the fields), and `step_rows` turns a trajectory's lines back into the rows thinkgym's learner
trains on (`episode_rows`).

All samples of a seed are written together, so an interrupted run resumes by skipping the seeds
already in the file (a seed cut off mid-write is sampled again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..rollout.collector import Collector
from ..rollout.engine import Engine
from ..types import Episode, Row, extends

FORMATS = ("episodes", "steps")


def done_seeds(path: str | Path, n: int) -> set[int]:
    """Seeds already in the file. A run cut off mid-write leaves a torn line or a last seed with
    fewer than `n` samples: the file is truncated back to the last complete seed. A step line counts
    as a sample when it is its trajectory's last (`is_last`)."""
    path = Path(path)
    if not path.exists():
        return set()
    seeds: set[int] = set()
    offset = good_end = count = 0
    current = None
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                seed, done = int(rec["seed"]), int(bool(rec.get("is_last", True)))
            except (ValueError, KeyError, TypeError, AttributeError):
                break
            count = count + done if seed == current else done
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


def jsonable(value: Any) -> Any:
    """`value` (an env's `info`) with JSON types only: numpy scalars as numbers, non-finite floats and
    anything else as their string."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def step_records(ep: Episode, sample: int, env_id: str, tokenizer: Any = None) -> list[dict[str, Any]]:
    """One record per step of `ep`, in order. `response_ids` are the tokens the policy sampled (its EOS
    included when it ended the episode) followed by the tokens the env appended to the context before the
    next step (tool outputs): `env_mask` is 1 on the first, 0 on the second, and `logprobs` are the
    sampled tokens' (0 on appended ones). So a step whose `prompt_ids` are the previous step's
    `prompt_ids + response_ids` continues that sequence; any other step starts a new one (a Delethink
    reset). The last step carries the reward and the env's final `info`. With a `tokenizer`, each record
    also holds `prompt_text` and `response_text`, its ids decoded, to read the trace."""
    tid = f"{env_id}/{ep.seed}/{sample}"
    recs = []
    for k, st in enumerate(ep.steps):
        ids, logps = st.sampled
        nxt = ep.steps[k + 1] if k + 1 < len(ep.steps) else None
        appended = list(nxt.prompt_ids[len(st.prompt_ids) + len(ids):]) if nxt is not None and extends(st, nxt) else []
        recs.append({"trajectory_id": tid, "env": env_id, "seed": ep.seed, "sample": sample, "step": k, "is_last": nxt is None,
                     "prompt_ids": list(st.prompt_ids), "response_ids": ids + appended, "logprobs": logps + [0.0] * len(appended),
                     "env_mask": [1] * len(ids) + [0] * len(appended), "finish_reason": st.finish_reason,
                     "reward": float(ep.reward) if nxt is None else None, "info": jsonable(ep.info) if nxt is None else None})
        if tokenizer is not None:
            recs[-1].update(prompt_text=tokenizer.decode(recs[-1]["prompt_ids"], skip_special_tokens=False),
                            response_text=tokenizer.decode(recs[-1]["response_ids"], skip_special_tokens=False))
    return recs


def step_rows(records: Sequence[dict[str, Any]], index: int) -> list[Row]:
    """The training rows of one trajectory's step records (in step order), as thinkgym's learner builds them
    from the episode (`episode_rows`): a step whose prompt is the sequence so far continues its row, any
    other starts a row of its own."""
    rows: list[Row] = []
    for rec in records:
        prompt, response = list(rec["prompt_ids"]), list(rec["response_ids"])
        if rows and prompt == rows[-1].input_ids:
            row = rows[-1]
            row.input_ids += response
            row.loss_mask += list(rec["env_mask"])
            row.old_logprobs += list(rec["logprobs"])
        else:
            rows.append(Row(prompt + response, len(prompt), list(rec["env_mask"]), list(rec["logprobs"]), index))
    return [r for r in rows if r.completion_len > 0]


def file_format(path: Path) -> str | None:
    """Which format a non-empty jsonl holds (by its first line), or None for an empty or missing file."""
    if not path.exists():
        return None
    with open(path) as f:
        first = f.readline()
    if not first.strip():
        return None
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return None  # a torn first line: done_seeds truncates it away
    return "steps" if "is_last" in rec else "episodes"


def sample_traces(engine: Engine, env_id: str, seeds: Sequence[int], out: str | Path, n: int = 4,
                  env_kwargs: dict[str, Any] | None = None, temperature: float = 1.0, top_p: float = 1.0,
                  seeds_per_batch: int = 32, format: str = "episodes", text: bool = False) -> dict[str, float]:
    """Append `n` sampled episodes per seed not yet in `out`, as one line per episode (`format="episodes"`)
    or one per step (`"steps"`, with decoded `prompt_text` and `response_text` if `text`); return counts over
    the whole file's new part."""
    if n < 1 or seeds_per_batch < 1:
        raise ValueError(f"n and seeds_per_batch must be >= 1; got n={n}, seeds_per_batch={seeds_per_batch}")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; accepted: {list(FORMATS)}")
    if text and format != "steps":
        raise ValueError("text=True (--text) adds decoded text to format='steps' lines; 'episodes' lines hold their text already")
    out = Path(out)
    held = file_format(out)
    if held is not None and held != format:
        raise ValueError(f"{out} holds {held} lines; format={format!r} appends to a file of its own kind (give another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_seeds(out, n)
    todo = [int(s) for s in seeds if int(s) not in skip]
    collector = Collector(env_id, engine, env_kwargs, group_size=n, temperature=temperature, top_p=top_p)
    tok = engine.policy.tokenizer
    written = correct = 0
    for i in range(0, len(todo), seeds_per_batch):
        batch = collector.collect(todo[i:i + seeds_per_batch])
        if format == "steps":
            recs = [r for k, ep in enumerate(batch.episodes) for r in step_records(ep, k % n, env_id, tok if text else None)]
        else:
            recs = [episode_record(ep, k % n, env_id, tok) for k, ep in enumerate(batch.episodes)]
        with open(out, "a") as f:  # one write per batch: a seed's samples land together
            f.write("".join(json.dumps(r) + "\n" for r in recs))
        written += len(batch.episodes)
        correct += sum(bool(ep.info.get("correct", False)) for ep in batch.episodes)
        print(f"sampled {min(i + seeds_per_batch, len(todo))}/{len(todo)} seeds, accuracy so far {correct / written:.3f}", flush=True)
    return {"skipped_seeds": len(seeds) - len(todo), "new_seeds": len(todo), "new_traces": written,
            "new_accuracy": correct / written if written else float("nan")}
