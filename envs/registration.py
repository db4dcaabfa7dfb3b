"""Every environment id, registered with Gymnasium's own registry when thinkgym is imported."""

from __future__ import annotations

import inspect
import re
from typing import Any

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


# A client of a served env (`thinkgym serve`); not in ENV_SPECS, the ids a server can serve.
REMOTE_SPEC = ("thinkgym/Remote-v0", "thinkgym.envs.remote:RemoteEnv")


def register_all() -> None:
    """Register every id of `ENV_SPECS` (and the served-env client) with Gymnasium, refusing an id listed twice
    or already registered as another environment (Gymnasium would only warn and replace it); registering the
    same spec again is a no-op."""
    specs = [*ENV_SPECS, (*REMOTE_SPEC, {})]
    ids = [spec[0] for spec in specs]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"env ids {twice} are listed more than once in ENV_SPECS; each id registers once")
    for env_id, entry_point, kwargs in specs:
        spec = gym.registry.get(env_id)
        if spec is None:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
        elif (spec.entry_point, spec.kwargs) != (entry_point, kwargs):
            raise ValueError(f"env id {env_id!r} is already registered with Gymnasium as {spec.entry_point} {spec.kwargs}; "
                             f"thinkgym registers it as {entry_point} {kwargs}")


def accepted_kwargs(env_id: str) -> list[str]:
    """The keyword arguments an env id's constructor names, following `**kwargs` up its base classes."""
    cls = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(names)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gym.make` (no env checker), where a keyword the env does not take is a one-line error naming the
    env and the keywords it accepts, not a TypeError that prints every argument (a tokenizer included)."""
    try:
        return gym.make(env_id, disable_env_checker=True, **kwargs)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unknown is None:
            raise
        raise ValueError(f"{env_id} takes no keyword argument {unknown.group(1)!r}; accepted: {accepted_kwargs(env_id)}"
                         + (" (and the task's knobs, in task_kwargs)" if "task_kwargs" in accepted_kwargs(env_id) else "")) from None
