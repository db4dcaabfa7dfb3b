"""Any registered env id served over OpenEnv's protocol (`thinkgym serve`), on openenv-core's own server.

openenv-core's `HTTPEnvServer` gives every WebSocket connection (`/ws`) its own environment, built by the
factory here, and runs its `reset`/`step` on that session's own thread; a disconnect closes it. The wire
format is OpenEnv's: an action is `{"text", "token_ids", "eos"}` (`ThinkgymAction`), an observation carries
the text, the reward, `done` and the contract's whole `info` (`ThinkgymObservation`), so prompt ids, budgets
and stop strings cross unchanged. The server runs no code of its own from a client: actions are text or
token ids, and an env that executes code (CodeInterpreter-v0) does so in its sandbox, as in process.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Optional

from openenv.core.env_server import Action, Environment, Observation, State, create_app
from pydantic import Field, StrictBool, StrictInt, StrictStr

from .core import TokenAction
from .registration import ENV_SPECS, make_env

RESET_KEYS = ("seed", "options", "episode_id")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ThinkgymAction(Action):
    """One action: text, or the exact token ids a policy sampled (a `TokenAction`)."""

    text: Optional[StrictStr] = Field(description="The action text; null is a non-text action, which the env reads as malformed")
    token_ids: Optional[list[StrictInt]] = Field(default=None, description="The sampled token ids; given, the env uses them as they are")
    eos: StrictBool = Field(default=False, description="With token_ids: the policy ended its output (sampled EOS)")

    def to_env(self) -> Any:
        """What the gym env's `step` takes: a `TokenAction`, the text, or None (malformed)."""
        if self.token_ids is not None:
            return TokenAction(self.text or "", self.token_ids, self.eos)
        return self.text


class ThinkgymObservation(Observation):
    """The text the policy reads next and the contract's `info` (`reward` and `done` are OpenEnv's)."""

    text: str = Field(default="", description="The observation text")
    info: dict[str, Any] = Field(default_factory=dict, description="The env's info: max_new_tokens, stop, prompt_token_ids, ...")
    terminated: bool = Field(default=False, description="The policy ended its answer")
    truncated: bool = Field(default=False, description="A budget ran out")


class ThinkgymState(State):
    """What a client needs to check its setup and to resume: the env, its tokenizer and budget, and the
    episode so far (reset arguments and every action), whose replay rebuilds it exactly."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    tokenizer: dict[str, Any] = Field(default_factory=dict, description="name_or_path and size of the env's tokenizer")
    max_thinking_tokens: Optional[int] = None
    seed: Optional[int] = None
    options: Optional[dict[str, Any]] = None
    actions: list[dict[str, Any]] = Field(default_factory=list, description="This episode's actions, as sent")
    last: Optional[dict[str, Any]] = Field(default=None, description="The latest observation (text, info, reward, terminated, truncated)")


def wire(value: Any, what: str) -> Any:
    """`value` as JSON carries it, or a one-line error: the contract's fields are JSON (no NaN)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the env's {what} cannot cross the wire as JSON: {exc}") from None


class ServedEnv(Environment[ThinkgymAction, ThinkgymObservation, ThinkgymState]):
    """One session's environment: a `make_env(env_id, **env_kwargs)` of its own."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]):
        super().__init__()
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.env = make_env(env_id, **env_kwargs)
        tok = self.env.unwrapped.tokenizer
        self._state = ThinkgymState(env_id=env_id, env_kwargs=self.env_kwargs,
                                    tokenizer={"name_or_path": tok.name_or_path, "size": len(tok)})

    def _observe(self, text: str, info: dict, reward: float | None, terminated: bool, truncated: bool) -> ThinkgymObservation:
        obs = ThinkgymObservation(text=text, info=wire(info, "info"), reward=reward, done=terminated or truncated,
                                  terminated=terminated, truncated=truncated)
        self._state.last = obs.model_dump(include={"text", "info", "reward", "terminated", "truncated"})
        return obs

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None, **kwargs: Any) -> ThinkgymObservation:
        """`env.reset(seed=, options=)`; any other key is refused (OpenEnv passes what the client sends)."""
        unknown = sorted(set(kwargs) - {"options"})
        if unknown:
            raise ValueError(f"reset takes no {unknown[0]!r}; accepted: {list(RESET_KEYS)}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or null; got {seed!r}")
        options = kwargs.get("options")
        text, info = self.env.reset(seed=seed, options=options)
        self._state = self._state.model_copy(update={"episode_id": episode_id, "step_count": 0, "seed": seed,
                                                     "options": options, "actions": []})
        return self._observe(text, info, None, False, False)

    def step(self, action: ThinkgymAction, timeout_s: Optional[float] = None, **kwargs: Any) -> ThinkgymObservation:
        text, reward, terminated, truncated, info = self.env.step(action.to_env())
        self._state.step_count += 1
        self._state.actions.append(action.model_dump(exclude={"metadata"}))
        return self._observe(text, info, float(reward), bool(terminated), bool(truncated))

    @property
    def state(self) -> ThinkgymState:
        budget = getattr(self.env.unwrapped, "max_thinking_tokens", None)
        self._state.max_thinking_tokens = int(budget) if budget is not None else None
        return self._state

    def close(self) -> None:
        self.env.close()


def check_env(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Fail before serving, in one line, on an unknown id or a bad setting (by building one env)."""
    ids = [spec[0] for spec in ENV_SPECS]
    if env_id not in ids:
        raise ValueError(f"--env {env_id!r} is not a thinkgym env id; accepted: {ids}")
    make_env(env_id, **env_kwargs).close()


def build_app(env_id: str, env_kwargs: dict[str, Any] | None = None, max_sessions: int = 256,
              session_timeout: float | None = None):
    """openenv-core's FastAPI app serving `env_id`: `/ws` sessions (one env each), `/health`, `/schema`."""
    from openenv.core.env_server import ConcurrencyConfig

    env_kwargs = dict(env_kwargs or {})
    check_env(env_id, env_kwargs)
    if not isinstance(max_sessions, int) or max_sessions < 1:
        raise ValueError(f"max_sessions must be an integer >= 1; got {max_sessions!r}")
    if session_timeout is not None and session_timeout <= 0:
        raise ValueError(f"session_timeout must be > 0 seconds (or None for no timeout); got {session_timeout!r}")
    factory = functools.partial(ServedEnv, env_id, env_kwargs)
    return create_app(factory, ThinkgymAction, ThinkgymObservation, env_name=env_id,
                      concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions, session_timeout=session_timeout))


def quiet_disconnects(app: Any) -> Any:
    """`app`, where a client that closes its WebSocket first is no error: openenv-core 0.3.0 closes the socket
    after freeing the session and catches only RuntimeError there, so uvicorn would log a traceback per client."""
    from starlette.websockets import WebSocketDisconnect

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except WebSocketDisconnect:
            if scope["type"] != "websocket":
                raise

    return wrapped


def serve(env_id: str, env_kwargs: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 8000,
          max_sessions: int = 256, session_timeout: float | None = None) -> None:
    """Serve until interrupted (uvicorn, as openenv-core's own `serve` does)."""
    import uvicorn

    app = build_app(env_id, env_kwargs, max_sessions, session_timeout)
    print(f"thinkgym serve: {env_id} at http://{host}:{port} (OpenEnv: sessions on /ws; /health, /schema)", flush=True)
    if host not in LOOPBACK:
        print(f"thinkgym serve: warning: listening on {host}, beyond this machine, with no authentication or TLS: anyone who "
              "reaches the port can open sessions (code runs only in the sandbox). Keep it on a trusted network.",
              file=sys.stderr, flush=True)
    uvicorn.run(quiet_disconnects(app), host=host, port=port, log_level="warning")
