"""Supervised fine-tuning on worked traces, through the same row format as RL.

Warm start: each task's `demonstration(seed)` is streamed through its environment by a scripted
agent, so the rows are exactly what the policy will see in RL (Delethink chunks included, each
with its carried context). The same trainer fine-tunes on any jsonl of (prompt, response) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import gymnasium as gym
import torch
from tqdm import tqdm

import thinkgym  # noqa: F401
from thinkgym.envs import TokenAction
from thinkgym.envs.registration import make_env
from thinkgym.envs.tokenizer import decode, encode

from .. import distributed, interrupt
from .checkpoint import resume_latest, save_checkpoint
from .logprobs import completion_logprobs, pad_rows
from .precision import build_optimizer
from ..policy import Policy
from ..rollout.engine import Completion
from ..rollout.sampling import STOP_WINDOW, find_stop
from ..types import Episode, Row, episode_rows


def _split_at_stop(tokenizer, ids: list[int], stop: Sequence[str]) -> list[int]:
    """The shortest prefix of `ids` whose text contains a stop string (all of it if none)."""
    if not stop:
        return ids
    for k in range(1, len(ids) + 1):
        if find_stop(tokenizer.decode(ids[max(0, k - STOP_WINDOW):k], skip_special_tokens=False), stop) is not None:
            return ids[:k]
    return ids


def demonstration_episode(env: gym.Env, seed: int) -> Episode:
    """Play the task's own demonstration through `env` and record it as an episode."""
    env = env.unwrapped
    _, info = env.reset(seed=seed)
    ids = encode(env.tokenizer, env.task.demonstration(env.problem.seed))
    ep, pos = Episode(seed, seed, []), 0
    while True:
        chunk = _split_at_stop(env.tokenizer, ids[pos:pos + info["max_new_tokens"]], info["stop"])
        pos += len(chunk)
        ended = pos >= len(ids)
        c = Completion(chunk, decode(env.tokenizer, chunk), [0.0] * len(chunk), "eos" if ended else "length", 0.0 if ended else None)
        ep.steps.append(c.step(info["prompt_token_ids"], env.tokenizer.eos_token_id))
        _, r, term, trunc, info = env.step(TokenAction(c.text, c.token_ids, ended))
        if term or trunc:
            ep.reward, ep.info, ep.terminated, ep.truncated = float(r), info, term, trunc
            return ep


def demonstration_rows(env_id: str, seeds: Iterable[int], tokenizer: Any, env_kwargs: dict | None = None) -> list[Row]:
    """Training rows from demonstrations; each ends with EOS, so the policy learns to stop."""
    env = make_env(env_id, **{"tokenizer": tokenizer, **(env_kwargs or {})})
    rows = []
    for seed in seeds:
        ep = demonstration_episode(env, seed)
        if ep.reward <= 0:
            raise ValueError(f"the demonstration for seed {seed} does not solve {env_id} (reward {ep.reward}); "
                             "check the env settings (for example a thinking budget too small for the task)")
        rows += episode_rows(ep, 0)
    return rows


def jsonl_rows(path: str | Path, tokenizer: Any, prompt_key: str = "prompt", response_key: str = "response") -> list[Row]:
    """Rows from a jsonl of (prompt, response) pairs; the response ends with EOS."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if prompt_key not in rec or response_key not in rec:
                raise ValueError(f"{path}:{n}: each record needs {prompt_key!r} and {response_key!r}; got {sorted(rec)}")
            p, r = encode(tokenizer, rec[prompt_key]), encode(tokenizer, rec[response_key]) + [tokenizer.eos_token_id]
            rows.append(Row(p + r, len(p), [1] * len(r), [0.0] * len(r), n))
    return rows


def train_sft(policy: Policy, rows: list[Row], steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
              seed: int = 0, writer: Any = None, progress: bool = True, output_dir: str | Path | None = None,
              save_every: int = 0, keep: int = 3, resume: bool = False, first_step: int = 0) -> list[float]:
    """Masked next-token cross-entropy on the rows, with a progress bar; returns this call's loss curve.

    With `output_dir`, a checkpoint (weights, optimizer, schedule, the batch sampler's state and the step)
    is written to `output_dir/checkpoint-<step>` every `save_every` steps and at the end (0: neither), and
    when a stop signal arrives (`interrupt.stop_on_signal`): the loop then ends after the current step, and
    the curve is shorter than `steps`. `resume` continues from the latest checkpoint there exactly:
    the final weights equal those of an uninterrupted run. `keep` bounds the checkpoints kept (0: all).
    `first_step` numbers the logged steps of a later round (the warm-start gate's) after the earlier ones."""
    if not rows:
        raise ValueError("no rows to train on")
    if steps < 1:
        raise ValueError(f"SFT needs steps >= 1; got {steps}")
    model = policy.model
    # warm-up over the first tenth, linear decay over the whole run, and a floor of 1e-3 (the demo's warm start)
    opt, sched = build_optimizer(model, lr, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps) + 1e-3)
    g = torch.Generator().manual_seed(seed)
    start = resume_latest(output_dir, policy, opt, sched, g) if resume and output_dir is not None else 0
    model.train()
    losses: list[float] = []
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="sft", dynamic_ncols=True, disable=not progress)
    for step in bar:
        idx = torch.randint(len(rows), (batch_size,), generator=g).tolist()
        batch = pad_rows([rows[i] for i in idx], policy.tokenizer.pad_token_id, policy.device)
        logp, _ = completion_logprobs(model, batch)
        loss = -(logp * batch.loss_mask).sum() / batch.loss_mask.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if writer is not None:
                writer.add_scalar("sft/loss", losses[-1], first_step + step)
        stop = distributed.any_rank(interrupt.requested() is not None)  # under torchrun, every rank stops at one step
        due = stop or (save_every and ((step + 1) % save_every == 0 or step + 1 == steps))
        if output_dir is not None and due and distributed.is_main():
            save_checkpoint(output_dir, step + 1, policy, {"step": step + 1, "optimizer": opt.state_dict(),
                                                           "scheduler": sched.state_dict(), "sampler": g.get_state()}, keep=keep)
        if stop:
            break
    bar.close()
    model.eval()
    return losses
