"""thinkgym: reasoning tasks as text Gymnasium environments, and a GRPO agent that trains on them.

`import thinkgym` registers every environment id with Gymnasium, so `gym.make("Delethink-v0")`
works; `gym.make("thinkgym:Delethink-v0")` imports it for you.
"""

from . import envs, rewards
from .envs import ENV_SPECS

__version__ = "0.1.0"
ENV_IDS = [spec[0] for spec in ENV_SPECS]

__all__ = ["envs", "rewards", "ENV_IDS", "__version__"]
