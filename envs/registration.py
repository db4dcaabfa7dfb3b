"""Every environment id, registered with Gymnasium's own registry when thinkgym is imported."""

from __future__ import annotations

import gymnasium as gym

# Demo-sized Delethink: tiny chunks so a tiny model on a CPU thinks across several of them.
DEMO_DELETHINK = {"chunk_size": 64, "carryover": 32, "head": 8, "max_chunks": 5, "task_kwargs": {"n_terms": 8}}

ENV_SPECS: list[tuple[str, str, dict]] = [
    ("Delethink-v0", "thinkgym.envs.delethink:DelethinkEnv", {}),
    ("DelethinkDemo-v0", "thinkgym.envs.delethink:DelethinkEnv", DEMO_DELETHINK),
    ("LongCoT-v0", "thinkgym.envs.reasoning:ReasoningEnv", {}),
    # -- more environments register below this line --
    ("CodeInterpreter-v0", "thinkgym.envs.code_interpreter:CodeInterpreterEnv", {}),
    ("Text2SQL-v0", "thinkgym.envs.text2sql:Text2SQLEnv", {}),
    ("MaskedStep-v0", "thinkgym.envs.masked_step:MaskedStepEnv", {}),
    ("StepReorder-v0", "thinkgym.envs.step_reorder:StepReorderEnv", {}),
    ("SAT-v0", "thinkgym.envs.sat:SATEnv", {}),
    ("SATCurriculum-v0", "thinkgym.envs.sat:SATCurriculumEnv", {}),
]


def register_all() -> None:
    for env_id, entry_point, kwargs in ENV_SPECS:
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
