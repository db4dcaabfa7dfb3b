"""What every engine shares around sampling: the token sampler (`race`, `sample_tokens`), the search
for a stop string in a completion's last tokens (`find_stop`), and the response openings forced on the
members of a group (`Opening`, `forced_openings`; AdaptThink's NoThinking/Thinking prefixes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from thinkgym.rewards import detect_think_mode

from .hf.compiling import compiled


STOP_WINDOW = 32
"""Tokens at the end of a completion whose text is searched for a stop string after each new token: longer
than any stop string, short enough that the search stays cheap as the completion grows."""


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """End index (exclusive) of the earliest stop string in `text`, or None."""
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    return min(ends) if ends else None


def race(logits: torch.Tensor, temperature: torch.Tensor, noise: torch.Tensor,
         top_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens drawn from softmax(logits / T) with the Exp(1) draws `noise`, and their log-probabilities.

    Sampling takes the argmax of log p - log E (an exponential race, which draws from p without a
    cumulative sum). Rows with T <= 0 are greedy and report log softmax(logits). `top_p` truncates
    the sampling distribution only, not the reported log-probability."""
    logits = logits.float()
    greedy = temperature <= 0
    logp = torch.log_softmax(logits / torch.where(greedy, 1.0, temperature).unsqueeze(-1), dim=-1)
    pick = logp
    if top_p is not None:
        sorted_lp, idx = logp.sort(dim=-1, descending=True)
        p = sorted_lp.exp()
        pick = logp.scatter(-1, idx, sorted_lp.masked_fill(p.cumsum(-1) - p > top_p.unsqueeze(-1), -torch.inf))
    tokens = torch.where(greedy, logits.argmax(-1), (pick - noise.log()).argmax(-1))
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


compiled_race = compiled(race)  # one fused pass over the logits instead of about ten on a GPU


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A host list as a device tensor, copied without waiting for the GPU's queued work (from pinned memory)."""
    t = torch.tensor(values, dtype=torch.long)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def force_prefixes(prefixes: Iterable[list[int]], step: int, tokens: torch.Tensor, logps: torch.Tensor, logits: torch.Tensor,
                   temperature: torch.Tensor) -> torch.Tensor | None:
    """Rows still inside their forced response prefix (`GenerationRequest.prefix_ids`, one list per row)
    take the prefix's token at `step` in place of their sample, scored under softmax(logits / T) (T = 1
    for greedy rows), in place. Returns the forced rows' batch indices, or None when there are none."""
    forced = [(b, p[step]) for b, p in enumerate(prefixes) if step < len(p)]
    if not forced:
        return None
    fb, ft = to_device([b for b, _ in forced], logits.device), to_device([t for _, t in forced], logits.device)
    scale = torch.where(temperature[fb] > 0, temperature[fb], torch.ones_like(temperature[fb])).unsqueeze(-1)
    tokens[fb] = ft
    logps[fb] = torch.log_softmax(logits[fb].float() / scale, -1).gather(-1, ft.unsqueeze(-1)).squeeze(-1)
    return fb


class TorchSampler:
    """The sampling RNG of an engine that samples with torch (`hf`, R2R), with the Engine protocol's
    seed and state methods."""

    def __init__(self, device: torch.device, seed: int | None):
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                  generator: torch.Generator | None, truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row with `race`; `truncate=False` says that no row has top_p < 1, which
    saves a sort over the vocabulary."""
    noise = torch.empty(logits.shape, dtype=torch.float, device=logits.device).exponential_(generator=generator)
    return (compiled_race if logits.is_cuda else race)(logits, temperature, noise, top_p if truncate else None)


@dataclass(frozen=True)
class Opening:
    """A response opening forced on one member of every group: its ids, its think mode, and the
    log-probability of its first token under the importance-sampling distribution it was drawn from
    (its share of the group: AdaptThink's log 1/2); its later tokens follow with probability 1."""

    ids: list[int]
    mode: str
    logprob: float


def forced_openings(texts: list[str], tokenizer: Any) -> list[Opening]:
    """One `Opening` per group member, from the reward's opening texts."""
    return [Opening(tokenizer.encode(t, add_special_tokens=False), detect_think_mode(t), math.log(texts.count(t) / len(texts)))
            for t in texts]
