"""Register a custom reward and a custom loss aggregation, then train with them through the CLI.

    python examples/custom_loss_and_reward.py --steps 2
"""

import sys

from thinkgym.agents.cli import main
from thinkgym.agents.learner.losses import RowStats, register_policy_loss
from thinkgym.rewards import register_reward


@register_reward("short_bonus")
def short_bonus(sample, max_len: int = 128) -> float:
    """A small bonus for finishing in fewer than `max_len` tokens."""
    return float(sample.finished and sample.num_tokens < max_len)


@register_policy_loss("sqrt_len")
def sqrt_len(stats: RowStats) -> list[float]:
    """Each row's token sum divided by sqrt(its length), then averaged over rows."""
    return [1.0 / (max(n, 1) ** 0.5 * len(stats.lengths)) for n in stats.lengths]


if __name__ == "__main__":
    main(["train", "--env", "DelethinkDemo-v0", "--reward", "correctness + 0.1*short_bonus", "--loss-type", "sqrt_len",
          "--prompts-per-step", "2", "--num-generations", "4", "--eval-every", "0", "--output-dir", "runs/custom", *sys.argv[1:]])
