"""One token per step: any thinkgym text environment as a classic RL environment.

Classic RL libraries (stable-baselines3 and the like) want a fixed-size observation and a
discrete action. This wrapper gives them the last `window` token ids of the context (left-padded
with `pad_id`) and one vocabulary entry per step. Entries are token ids, or short strings that
stand for their token ids (a "macro" such as "\\boxed{" keeps the vocabulary of a toy task small).
The written ids are handed to the wrapped environment as one `TokenAction` when the policy picks
the end entry (EOS: the output ended), when the step budget `info["max_new_tokens"]` is used up,
or when the text ends with one of `info["stop"]` (the output did not end). So rewards,
`terminated` and `truncated` are exactly the wrapped environment's, and all steps in between
give reward 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .core import TokenAction
from .tokenizer import encode


class TokenLevelWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    def __init__(self, env: gym.Env, vocab: Sequence[int | str] | None = None, window: int = 128, pad_id: int = -1):
        gym.utils.RecordConstructorArgs.__init__(self, vocab=vocab, window=window, pad_id=pad_id)
        gym.Wrapper.__init__(self, env)
        tok = env.unwrapped.tokenizer
        if tok.eos_token_id is None:
            raise ValueError("the wrapped environment's tokenizer has no eos_token_id; the end action needs one")
        if not isinstance(window, int) or window <= 0:
            raise ValueError(f"window must be a positive integer; got {window!r}")
        if not isinstance(pad_id, int) or pad_id >= 0:
            raise ValueError(f"pad_id must be a negative integer (token ids are >= 0); got {pad_id!r}")
        self.tokenizer, self.window, self.pad_id = tok, window, pad_id
        vocab_size = len(tok)
        if vocab is None:
            pieces = [(i,) for i in range(vocab_size)]
        else:
            pieces = [self._piece(v, vocab_size) for v in vocab]
            if (tok.eos_token_id,) not in pieces:
                pieces.append((tok.eos_token_id,))
        self.pieces: list[tuple[int, ...]] = pieces
        self.end_action = pieces.index((tok.eos_token_id,))
        self.action_space = spaces.Discrete(len(pieces))
        self.observation_space = spaces.Box(low=pad_id, high=vocab_size - 1, shape=(window,), dtype=np.float32)
        self._context: list[int] = []
        self._pending: list[int] = []

    def _piece(self, entry: int | str, vocab_size: int) -> tuple[int, ...]:
        if isinstance(entry, (int, np.integer)) and 0 <= int(entry) < vocab_size:
            return (int(entry),)
        if isinstance(entry, str) and entry:
            return tuple(encode(self.tokenizer, entry))
        raise ValueError(f"vocab entries must be token ids in 0..{vocab_size - 1} or non-empty strings; got {entry!r}")

    def _observe(self) -> np.ndarray:
        ids = (self._context + self._pending)[-self.window:]
        obs = np.full(self.window, self.pad_id, dtype=np.float32)
        if ids:
            obs[self.window - len(ids):] = ids
        return obs

    def _follow(self, info: dict) -> None:
        self._context, self._pending = list(info["prompt_token_ids"]), []
        self._budget, self._stop = int(info["max_new_tokens"]), list(info["stop"])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        self._follow(info)
        return self._observe(), info

    def step(self, action: Any):
        a = int(action)
        if not 0 <= a < len(self.pieces):
            raise ValueError(f"action must be in 0..{len(self.pieces) - 1}; got {action!r}")
        if a == self.end_action:
            return self._submit(eos=True)
        self._pending.extend(self.pieces[a])
        if len(self._pending) >= self._budget or (self._stop and self._ends_with_stop()):
            return self._submit(eos=False)
        return self._observe(), 0.0, False, False, {"pending_tokens": len(self._pending)}

    def _ends_with_stop(self) -> bool:
        text = self.tokenizer.decode(self._pending, skip_special_tokens=False)
        return any(text.endswith(s) for s in self._stop)

    def _submit(self, eos: bool):
        """Hand the written ids to the wrapped env as one action, and follow its next context."""
        ids = self._pending[: self._budget]
        obs, reward, terminated, truncated, info = self.env.step(TokenAction.from_ids(self.tokenizer, ids, eos))
        if terminated or truncated:
            self._context, self._pending = self._context + ids, []
        else:
            self._follow(info)
        return self._observe(), float(reward), terminated, truncated, info
