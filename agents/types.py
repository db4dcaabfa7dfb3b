"""The data that passes between rollout and learning: a policy call (`Step`), a rollout (`Episode`),
a training sequence (`Row`) and a collection (`Batch`), and `episode_rows`, which turns an episode
into its rows. The collector fills them; the learner, SFT and REDI read them. Also the env seed
ranges, so that no two uses draw the same problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

# Env seeds: evaluation uses 0..N-1; the warm start's demonstrations, RL training prompts, the
# monitor set of stateful rewards and the warm start's validation gate each start at their own base, far apart.
SFT_SEED_BASE, TRAIN_SEED_BASE, MONITOR_SEED_BASE, SFT_GATE_SEED_BASE = 1_000_000, 10_000_000, 20_000_000, 30_000_000


@dataclass
class Step:
    """One call of the policy: the prompt it read, the action the env got, and their log-probabilities.

    `eos` is (EOS id, its log-probability) when the policy ended the step by sampling EOS: the env
    never sees that token, but the training row ends with it, so that RL teaches when to stop."""

    prompt_ids: list[int]
    action_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    eos: tuple[int, float] | None = None
    version: int = 0
    """The policy version (optimizer steps taken) that sampled it; asynchronous rollouts may update the
    weights between the steps of an episode (between Delethink's chunks)."""

    @property
    def sampled(self) -> tuple[list[int], list[float]]:
        """Every token the policy sampled, EOS included, with its log-probability: what training sees."""
        if self.eos is None:
            return list(self.action_ids), list(self.logprobs)
        return list(self.action_ids) + [self.eos[0]], list(self.logprobs) + [self.eos[1]]


@dataclass
class Episode:
    """One rollout: its steps, final reward and final `info`. `group` is the seed it shares. `budget`
    is the thinking budget it was sampled under, in tokens over all its steps (see `thinking_budget`)."""

    group: int
    seed: int
    steps: list[Step]
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    budget: int | None = None

    @property
    def num_tokens(self) -> int:
        return sum(len(s.action_ids) for s in self.steps)


@dataclass
class Row:
    """One training sequence: prompt then completion; the loss sees only masked-in completion tokens."""

    input_ids: list[int]
    prompt_len: int
    loss_mask: list[int]
    old_logprobs: list[float]
    episode: int
    version: int = 0
    """The oldest policy version among the steps it holds (for a Delethink chunk: that chunk's)."""

    @property
    def completion_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass
class Batch:
    """Collected episodes, their training rows (`Row.episode` indexes `episodes`) and the collection's stats."""

    episodes: list[Episode]
    rows: list[Row]
    stats: dict[str, float]

    def groups(self, keep: Sequence[int], size: int) -> Batch:
        """The batch of the groups `keep` (in that order; a group is `size` consecutive episodes), each row
        re-pointed at its episode's new place: dynamic sampling keeps the groups that teach."""
        episodes: list[Episode] = []
        rows: list[Row] = []
        for g in keep:
            lo, hi = g * size, (g + 1) * size
            rows += [replace(r, episode=len(episodes) + r.episode - lo) for r in self.rows if lo <= r.episode < hi]
            episodes += self.episodes[lo:hi]
        return Batch(episodes, rows, self.stats)

    @staticmethod
    def concat(parts: Sequence[Batch], stats: dict[str, float]) -> Batch:
        """One batch of `parts`' episodes in order, their rows re-pointed likewise, with `stats`."""
        episodes: list[Episode] = []
        rows: list[Row] = []
        for b in parts:
            rows += [replace(r, episode=len(episodes) + r.episode) for r in b.rows]
            episodes += b.episodes
        return Batch(episodes, rows, stats)


def extends(prev: Step, nxt: Step) -> bool:
    """Whether `nxt`'s prompt is `prev`'s prompt and sampled tokens plus what the env inserted after them
    (one growing sequence, as in tool calls), rather than a new context (a Delethink reset)."""
    seq = list(prev.prompt_ids) + prev.sampled[0]
    return len(nxt.prompt_ids) >= len(seq) and list(nxt.prompt_ids[: len(seq)]) == seq


def step_groups(steps: list[Step]) -> list[list[Step]]:
    """Consecutive steps that make one training sequence: each one after the first `extends` the one before."""
    groups: list[list[Step]] = []
    for st in steps:
        if groups and extends(groups[-1][-1], st):
            groups[-1].append(st)
        else:
            groups.append([st])
    return groups


def group_row(group: list[Step], index: int) -> Row:
    """The row of one step group: the first prompt, then every sampled token (trained on) and every token
    the env inserted between steps (masked out, with log-probability 0)."""
    first = group[0]
    ids, logps = first.sampled
    row = Row(list(first.prompt_ids) + ids, len(first.prompt_ids), [1] * len(ids), logps, index, min(st.version for st in group))
    for st in group[1:]:
        inserted = list(st.prompt_ids[len(row.input_ids):])
        ids, logps = st.sampled
        row.input_ids += inserted + ids
        row.loss_mask += [0] * len(inserted) + [1] * len(ids)
        row.old_logprobs += [0.0] * len(inserted) + logps
    return row


def episode_rows(ep: Episode, index: int) -> list[Row]:
    """Rows of an episode. Steps whose prompt extends the previous sequence (append-only, as in
    tool calls) merge into one row, with the tokens the env inserted masked out; other steps
    (Delethink chunks) are rows of their own."""
    rows = [group_row(g, index) for g in step_groups(ep.steps)]
    return [r for r in rows if r.completion_len > 0]
