"""REDI (Reinforcement Distillation, Xu et al. 2025): learn from a teacher's wrong traces too.

Stage 1 is SFT on the correct traces. Stage 2 minimises, per (prompt, correct y_w, incorrect y_l)
pair, the reference-free objective

    -log π(y_w|x) / |y_w|  +  α · log π(y_l|x) / |y_l|        (α = 0.8 by default)

i.e. it raises the positive's mean token log-probability and lowers the negative's less strongly;
α < 1 is what keeps both from collapsing together. The data is any jsonl of (prompt, response,
correct), such as what `thinkgym sample` writes; a trace of several Delethink chunks counts as one
response whose log-likelihood is the sum over its chunks, each scored in its own context.
Where a task's worked solution is its one correct trace, `cut_after_first_error` shortens a negative
to its first wrong token, so that stage 2 does not push down the correct steps around the error,
and `label_by_reference` counts a trace as correct only when every step matches, not just the answer.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from thinkgym.envs.tokenizer import encode

from .. import interrupt
from ..learner.checkpoint import resume_latest, save_checkpoint
from ..learner.logprobs import completion_logprobs, pad_rows
from ..learner.precision import build_optimizer, lr_schedule
from ..policy import Policy
from ..types import Row

REQUIRED = ("prompt", "response", "correct")


@dataclass
class Trace:
    """One response to one prompt, as the rows a model is scored on (one row per Delethink chunk)."""

    prompt: str
    correct: bool
    rows: list[Row]

    @property
    def num_tokens(self) -> int:
        return sum(sum(r.loss_mask) for r in self.rows)


@dataclass
class RediData:
    """Stage 1's positives, stage 2's (correct, incorrect) pairs, and the counts behind them."""

    positives: list[Trace]
    pairs: list[tuple[Trace, Trace]]
    counts: dict[str, int] = field(default_factory=dict)


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1] (0 = SFT on positives, 1 = symmetric); got alpha={alpha}")
    return float(alpha)


def _row(prompt_ids: list[int], response_ids: list[int], episode: int) -> Row:
    return Row(list(prompt_ids) + list(response_ids), len(prompt_ids), [1] * len(response_ids), [0.0] * len(response_ids), episode)


def record_trace(rec: dict[str, Any], tokenizer: Any, index: int = 0) -> Trace:
    """A jsonl record as a trace. Token ids (from `thinkgym sample`) are used as they are; otherwise
    the text is encoded. EOS closes the response unless the record says it was cut off (`eos`: false)."""
    eos = [tokenizer.eos_token_id] if rec.get("eos", True) else []
    if rec.get("steps"):  # several chunks: each its own row, EOS after the last
        steps = rec["steps"]
        rows = [_row(s["prompt_ids"], list(s["response_ids"]) + (eos if k == len(steps) - 1 else []), index)
                for k, s in enumerate(steps)]
    elif "prompt_ids" in rec and "response_ids" in rec:
        rows = [_row(rec["prompt_ids"], list(rec["response_ids"]) + eos, index)]
    else:
        rows = [_row(encode(tokenizer, rec["prompt"]), encode(tokenizer, rec["response"]) + eos, index)]
    rows = [r for r in rows if r.completion_len > 0]
    return Trace(str(rec["prompt"]), bool(rec["correct"]), rows)


def load_traces(path: str | Path, tokenizer: Any) -> list[Trace]:
    """Traces from a jsonl with at least `prompt`, `response` and `correct` (bool) per line."""
    traces = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object: {exc}") from exc
            missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise ValueError(f"{path}:{n}: each record needs the fields {list(REQUIRED)}; missing {missing}")
            if not isinstance(rec["correct"], bool) and rec["correct"] not in (0, 1):
                raise ValueError(f"{path}:{n}: 'correct' must be true/false (or 0/1); got {rec['correct']!r}")
            traces.append(record_trace(rec, tokenizer, n))
    if not traces:
        raise ValueError(f"{path} has no records")
    return traces


def build_redi_data(traces: list[Trace], pairs_per_prompt: int | None = 1) -> RediData:
    """Group traces by prompt. Every correct trace is a stage-1 positive; a prompt with both kinds
    gives up to `pairs_per_prompt` (None: as many as possible) pairs, matching its i-th correct
    with its i-th incorrect trace in file order (the paper keeps one pair per problem)."""
    if pairs_per_prompt is not None and pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1 or None; got {pairs_per_prompt}")
    by_prompt: dict[str, tuple[list[Trace], list[Trace]]] = defaultdict(lambda: ([], []))
    for t in traces:
        by_prompt[t.prompt][0 if t.correct else 1].append(t)
    pairs = []
    for pos, neg in by_prompt.values():
        k = min(len(pos), len(neg)) if pairs_per_prompt is None else min(len(pos), len(neg), pairs_per_prompt)
        pairs += list(zip(pos[:k], neg[:k]))
    groups = list(by_prompt.values())
    counts = {"traces": len(traces), "prompts": len(groups),
              "positives": sum(len(p) for p, _ in groups), "negatives": sum(len(n) for _, n in groups),
              "prompts_with_both": sum(1 for p, n in groups if p and n),
              "prompts_only_positive": sum(1 for p, n in groups if p and not n),
              "prompts_only_negative": sum(1 for p, n in groups if n and not p),
              "pairs": len(pairs)}
    return RediData([t for p, _ in groups for t in p], pairs, counts)


def _one_row(trace: Trace) -> Row:
    if len(trace.rows) != 1:
        raise ValueError(f"locating an error needs a one-row trace (no Delethink chunks); this one has {len(trace.rows)} rows")
    return trace.rows[0]


def first_error(trace: Trace, reference_ids: list[int]) -> int | None:
    """Index of the first response token that leaves `reference_ids` (a correct response, EOS
    included, for tasks whose worked solution is the one correct trace). None when no response
    token is wrong: it matches the reference, or stops early on a prefix of it."""
    row = _one_row(trace)
    response = row.input_ids[row.prompt_len:]
    k = next((i for i, (a, b) in enumerate(zip(response, reference_ids)) if a != b), len(reference_ids))
    return k if k < len(response) else None


def label_by_reference(traces: list[Trace], references: dict[str, list[int]]) -> list[Trace]:
    """The traces relabelled: correct only if right by the verifier *and* free of wrong tokens against
    their prompt's worked solution. An outcome label passes a trace whose partial steps are wrong but
    whose final answer is right, so positives and negatives would not split right steps from wrong ones."""
    missing = sorted({t.prompt for t in traces} - set(references))
    if missing:
        raise ValueError(f"no worked solution for {len(missing)} prompt(s), e.g. {missing[0]!r}; references must cover every prompt")
    return [Trace(t.prompt, t.correct and first_error(t, references[t.prompt]) is None, t.rows) for t in traces]


def cut_after_first_error(trace: Trace, reference_ids: list[int]) -> Trace:
    """The negative up to and including its first wrong token. After that token a wrong trace mostly
    continues correctly from a wrong state; pushing those tokens down penalises correct steps."""
    k = first_error(trace, reference_ids)
    if k is None:
        raise ValueError("no response token leaves the reference: there is no first error to cut after")
    row = trace.rows[0]
    return Trace(trace.prompt, trace.correct, [Row(row.input_ids[:row.prompt_len + k + 1], row.prompt_len,
                                                   row.loss_mask[:k + 1], row.old_logprobs[:k + 1], row.episode)])


def sequence_logprobs(policy: Policy, traces: list[Trace]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π(y|x) of each trace over all its rows, and its token count |y| (clamped to >= 1)."""
    rows = [r for t in traces for r in t.rows]
    owner = torch.tensor([i for i, t in enumerate(traces) for _ in t.rows], device=policy.device)
    batch = pad_rows(rows, policy.tokenizer.pad_token_id, policy.device)
    logp, _ = completion_logprobs(policy.model, batch)
    per_row = (logp * batch.loss_mask).sum(1)
    total = torch.zeros(len(traces), device=policy.device, dtype=per_row.dtype).index_add(0, owner, per_row)
    lengths = torch.zeros_like(total).index_add(0, owner, batch.loss_mask.sum(1)).clamp(min=1)
    return total, lengths


def redi_loss(logp_w: torch.Tensor, len_w: torch.Tensor, logp_l: torch.Tensor, len_l: torch.Tensor,
              alpha: float = 0.8) -> torch.Tensor:
    """Mean over pairs of -logp_w/|y_w| + α·logp_l/|y_l| (paper Eq. 5), from summed log-probs."""
    alpha = check_alpha(alpha)
    return (-logp_w / len_w.clamp(min=1) + alpha * logp_l / len_l.clamp(min=1)).mean()


def train_redi(policy: Policy, pairs: list[tuple[Trace, Trace]], steps: int = 100, batch_size: int = 8, lr: float = 1e-5,
               alpha: float = 0.8, warmup_frac: float = 0.1, seed: int = 0, writer: Any = None,
               eval_fn: Callable[[], dict[str, float]] | None = None, eval_every: int = 0, output_dir: str | Path | None = None,
               save_every: int = 0, log_every: int = 10, resume: bool = False, keep: int = 3) -> list[dict[str, float]]:
    """Stage 2: AdamW (fp32 masters under bf16) with linear warmup and decay on random minibatches of pairs. Logs `loss`,
    `logps/chosen` and `logps/rejected` (mean token log-probs: watch for both falling together, the
    collapse the paper warns about), `learning_rate`, `grad_norm` and `eval/*`; returns this call's log. A stop signal
    (`interrupt.stop_on_signal`) ends it after the current step, with a checkpoint in `output_dir`; `resume`
    continues from the latest checkpoint there exactly, as SFT's does (the final weights equal an uninterrupted run's).
    `keep` bounds the checkpoints kept (0: all)."""
    alpha = check_alpha(alpha)
    if not pairs:
        raise ValueError("no (correct, incorrect) pairs to train on: the data needs prompts with both kinds of trace")
    model = policy.model
    opt, sched = build_optimizer(model, lr, lr_schedule("linear", max(1, int(warmup_frac * steps)), steps))
    g = torch.Generator().manual_seed(seed)
    start = resume_latest(output_dir, policy, opt, sched, g) if resume and output_dir is not None else 0
    history: list[dict[str, float]] = []

    def log(metrics: dict[str, float], step: int) -> None:
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)
            writer.flush()

    def evaluate_now() -> dict[str, float]:
        """`eval_fn`, which a stop signal cuts short (nothing of it is kept)."""
        try:
            with interrupt.abortable():
                return eval_fn()
        except interrupt.Interrupted:
            return {}

    if eval_fn is not None and eval_every and start == 0:
        log({f"eval/{k}": v for k, v in evaluate_now().items()}, 0)
    for step in range(start + 1, steps + 1):
        model.train()
        idx = torch.randint(len(pairs), (min(batch_size, len(pairs)),), generator=g).tolist()
        chosen, rejected = [pairs[i][0] for i in idx], [pairs[i][1] for i in idx]
        logp, lens = sequence_logprobs(policy, chosen + rejected)
        b = len(idx)
        loss = redi_loss(logp[:b], lens[:b], logp[b:], lens[b:], alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        lr_now = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        model.eval()
        mean_tok = (logp / lens).detach()
        m = {"loss": loss.item(), "logps/chosen": float(mean_tok[:b].mean()), "logps/rejected": float(mean_tok[b:].mean()),
             "learning_rate": lr_now, "grad_norm": grad_norm}
        if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
            m.update({f"eval/{k}": v for k, v in evaluate_now().items()})
        log(m, step)
        history.append(m)
        if log_every and (step % log_every == 0 or step == steps):
            print(f"redi step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "learning_rate"), flush=True)
        stop = interrupt.requested() is not None  # a stop signal ends the run here, with a checkpoint
        if output_dir is not None and ((save_every and step % save_every == 0) or step == steps or stop):
            save_checkpoint(output_dir, step, policy, {"step": step, "alpha": alpha, "optimizer": opt.state_dict(),
                                                        "scheduler": sched.state_dict(), "sampler": g.get_state()}, keep=keep)
        if stop:
            break
    return history
