"""The LLM agent: a policy, rollout engines, the GRPO learner and the methods built on it.

The main names load from here on first use (PEP 562), so `import thinkgym.agents` (and `thinkgym eval`)
loads neither the learner nor TensorBoard until one is asked for:

    from thinkgym.agents import GRPOConfig, GRPOTrainer, make_engine
"""

from __future__ import annotations

from thinkgym.lazy import lazy_attributes

_HOME = {
    "Policy": "policy", "Step": "types", "Episode": "types", "Row": "types", "Batch": "types",
    "Engine": "rollout.engine", "GenerationRequest": "rollout.engine", "Completion": "rollout.engine",
    "ENGINES": "rollout.engine", "make_engine": "rollout.engine", "HFEngine": "rollout.hf.engine",
    "Collector": "rollout.collector",
    "GRPOConfig": "learner.config", "GRPOTrainer": "learner.trainer", "POLICY_LOSSES": "learner.losses",
    "ADVANTAGE_ESTIMATORS": "learner.advantages", "train_sft": "learner.sft", "demonstration_rows": "learner.sft",
}
__all__ = sorted(_HOME)


__getattr__ = lazy_attributes(__name__, _HOME)
