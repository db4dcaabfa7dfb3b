"""A served environment as a Gymnasium env (`thinkgym/Remote-v0`), on openenv-core's own client.

`gym.make("thinkgym/Remote-v0", url="http://host:8000")` opens one OpenEnv WebSocket session on a
`thinkgym serve` server, and `reset`/`step` cross the wire as the contract says: `info` unchanged, a
`TokenAction`'s ids and EOS flag as they are. So `thinkgym train`, SB3 (through `TokenLevelWrapper`) and the
adapters run against a served env unchanged. A server that goes away (stopped, restarted) is a
`ConnectionError` naming it; `state()` and `resume(state)` rebuild an episode on a fresh session.
"""

from __future__ import annotations

import asyncio
from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient

from .core import TextEnv, TokenAction
from .server import ThinkgymAction, ThinkgymObservation, ThinkgymState
from .tokenizer import TokenizerLike

REMOTE_ID = "thinkgym/Remote-v0"


class ThinkgymClient(EnvClient[ThinkgymAction, ThinkgymObservation, ThinkgymState]):
    """openenv-core's async WebSocket client, typed with thinkgym's action, observation and state."""

    def _step_payload(self, action: ThinkgymAction) -> dict[str, Any]:
        return action.model_dump(exclude={"metadata"})

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[ThinkgymObservation]:
        obs = ThinkgymObservation(**payload.get("observation", {}), reward=payload.get("reward"), done=payload.get("done", False))
        return StepResult(observation=obs, reward=obs.reward, done=obs.done)

    def _parse_state(self, payload: dict[str, Any]) -> ThinkgymState:
        return ThinkgymState(**payload)


def wire_action(action: Any) -> ThinkgymAction:
    """A gym action as the wire carries it: a `TokenAction` keeps its ids and EOS flag; anything not text
    goes as null text, which the server's env reads as a malformed action (as it would in process)."""
    if isinstance(action, TokenAction):
        return ThinkgymAction(text=str(action), token_ids=list(action.token_ids), eos=action.eos)
    return ThinkgymAction(text=str(action) if isinstance(action, str) else None)


class RemoteEnv(TextEnv):
    """One session on a `thinkgym serve` server. `env_id`, where given, must be the id it serves; the
    tokenizer (as for any env) must be the server env's, checked by name and size at connection."""

    def __init__(self, url: str, env_id: str | None = None, tokenizer: TokenizerLike = None, connect_timeout_s: float = 10.0,
                 message_timeout_s: float = 600.0, render_mode: str | None = None):
        super().__init__(tokenizer, render_mode)
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"url must be the server's address, http(s):// or ws(s)://host:port; got {url!r}")
        self.url, self.env_id = url, env_id
        self._timeouts = (connect_timeout_s, message_timeout_s)
        self._client = None
        served = self.state()
        if env_id is not None and env_id != served.env_id:
            raise ValueError(f"the server at {url} serves {served.env_id}, not env_id={env_id!r}")
        self.env_id = served.env_id
        mine = {"name_or_path": self.tokenizer.name_or_path, "size": len(self.tokenizer)}
        if served.tokenizer != mine:
            raise ValueError(f"the tokenizer here ({mine}) is not the served env's ({served.tokenizer}): token ids would not "
                             f"mean the same; pass tokenizer= the one the server was started with")
        if served.max_thinking_tokens is not None:  # what the collector reads as an episode's budget
            self.max_thinking_tokens = served.max_thinking_tokens

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request on this env's session, opened on first use; a lost server is a `ConnectionError`."""
        from websockets.exceptions import ConnectionClosed

        if self._client is None:
            self._client = ThinkgymClient(self.url, connect_timeout_s=self._timeouts[0], message_timeout_s=self._timeouts[1]).sync()
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except (OSError, asyncio.TimeoutError, ConnectionClosed) as exc:  # refused, reset, no reply in time
            self.close()
            raise ConnectionError(f"the thinkgym server at {self.url} is not answering ({type(exc).__name__}: {exc}); it was "
                                  "stopped or restarted, and this session's episode is gone. Once it is back, reset() opens a "
                                  "new session, or resume(state) replays an episode saved with state()") from None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        data = {"seed": seed, **({"options": options} if options is not None else {})}
        obs = self._call("reset", **data).observation
        self._last_obs = obs.text
        return obs.text, obs.info

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict]:
        obs = self._call("step", wire_action(action)).observation
        self._last_obs = obs.text
        return obs.text, float(obs.reward), obs.terminated, obs.truncated, obs.info

    def state(self) -> ThinkgymState:
        """The session's state: the served env, its tokenizer, and this episode's reset arguments and actions."""
        return self._call("state")

    def resume(self, state: ThinkgymState) -> tuple[str, dict]:
        """Rebuild a saved episode on this session (the env is deterministic given its seed and actions):
        reset as it was, replay its actions, and return the latest observation and info."""
        obs, info = self.reset(seed=state.seed, options=state.options)
        for action in state.actions:
            obs, _, _, _, info = self.step(TokenAction(action["text"] or "", action["token_ids"], action["eos"])
                                           if action["token_ids"] is not None else action["text"])
        return obs, info

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # the connection is already gone: nothing is left to free
                pass
