"""The text-environment contract: a small `gymnasium.Env` base for LLM policies.

Observations and actions are text. `info` tells the agent how to write the next action
(`max_new_tokens`, `stop`) and carries the exact token ids of the observation
(`prompt_token_ids`), so that training rows are token-exact; the step that ends an episode says
0 tokens, no stops and an empty prompt. The README's "Writing your own agent" section is the one
description of this contract.
"""

from __future__ import annotations

import string
from typing import Any, Sequence

import gymnasium as gym
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from .tokenizer import TokenizerLike, decode, encode, resolve_tokenizer

# Characters `Text.sample()` draws from: printable ASCII, whitespace, and a spread of the unicode
# that models write (accents, Greek, maths, arrows, CJK). `contains` accepts any text without
# control characters other than tab, newline and carriage return.
_SAMPLE_CHARSET = (
    string.ascii_letters + string.digits + string.punctuation + " \n\t"
    + "àáâäçèéêëìíîïñòóôöùúûüß" + "αβγδεθλμπσφω∑∏∫√∞≤≥≠≈±×÷→⇒∈∀∃∂∇" + "你好数学答案" + "…–—“”‘’"
)
MAX_TEXT_CHARS = 1 << 20
MAX_TOKEN_ID = 1 << 32  # fast tokenizers hold ids as u32; the model may pad its vocabulary past len(tokenizer)


class LLMText(spaces.Text):
    """A `Text` space configured for real model output: empty strings and any unicode allowed.

    `sample()` draws strings of at most `sample_max_length` characters (unless a mask says
    otherwise): random text is for robustness checks, and a megabyte of it per draw helps no one.
    """

    def __init__(self, max_length: int = MAX_TEXT_CHARS, sample_max_length: int = 512, seed: int | None = None):
        super().__init__(max_length=max_length, min_length=0, charset=_SAMPLE_CHARSET, seed=seed)
        self.sample_max_length = min(sample_max_length, max_length)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is None and probability is None:
            length = int(self.np_random.integers(0, self.sample_max_length + 1))
            return super().sample(mask=(length, None))
        return super().sample(mask=mask, probability=probability)

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str) or not (self.min_length <= len(x) <= self.max_length):
            return False
        return all(ch.isprintable() or ch in "\n\t\r" for ch in x)

    def __repr__(self) -> str:
        return f"LLMText(max_length={self.max_length})"


class TokenAction(str):
    """An action given as the exact token ids a policy generated.

    It is a `str` (its value is the decoded text), so it fits the `Text` action space and passes
    through wrappers and vector envs unchanged; environments that see a `TokenAction` use
    `token_ids` and `eos` as they are and never re-tokenise. `eos=True` means the model ended its
    output (it sampled EOS); the EOS token itself is not part of `token_ids`.
    """

    token_ids: tuple[int, ...]
    eos: bool

    def __new__(cls, text: str, token_ids: Sequence[int], eos: bool) -> "TokenAction":
        obj = super().__new__(cls, text)
        obj.token_ids = tuple(int(t) for t in token_ids)
        obj.eos = bool(eos)
        return obj

    @classmethod
    def from_ids(cls, tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], eos: bool) -> "TokenAction":
        return cls(decode(tokenizer, token_ids), token_ids, eos)

    def __reduce__(self):  # keep ids and flag across pickling (async vector envs)
        return (TokenAction, (str(self), self.token_ids, self.eos))


class TextEnv(gym.Env[str, str]):
    """Base class: text spaces, the tokenizer, action parsing and the `info` that guides the agent."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, tokenizer: TokenizerLike = None, render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi'; got {render_mode!r}")
        self.render_mode = render_mode
        self.tokenizer = resolve_tokenizer(tokenizer)
        self.observation_space = LLMText()
        self.action_space = LLMText()
        self._last_obs = ""

    # -- helpers for subclasses -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return decode(self.tokenizer, ids)

    def parse_action(self, action: Any, budget: int) -> tuple[list[int], bool, bool]:
        """Token ids of an action, whether the policy ended its output, and whether it was malformed.

        A `TokenAction` is taken as it is. A plain string is tokenised; it counts as ended when it
        contains the EOS token (cut there) or is shorter than `budget` tokens. Anything past the
        budget is dropped. A non-string action, or a `TokenAction` with an id no tokenizer can hold
        (negative, or past 32 bits), is malformed and treated as an empty ended output. Ids between the
        tokenizer's length and the model's padded vocabulary are real samples and decode to ''.
        """
        if isinstance(action, TokenAction):
            ids, ended = list(action.token_ids), action.eos
            if any(not 0 <= t < MAX_TOKEN_ID for t in ids):
                return [], True, True
        elif isinstance(action, str):
            ids = self.encode(action)
            eos_id = self.tokenizer.eos_token_id
            if eos_id is not None and eos_id in ids:
                ids, ended = ids[: ids.index(eos_id)], True
            else:
                ended = len(ids) < budget
        else:
            return [], True, True
        if len(ids) >= budget:
            ids, ended = ids[:budget], ended and len(ids) == budget
        return ids, ended, False

    def observe(self, prompt_ids: list[int], max_new_tokens: int, stop: Sequence[str] = (), **extra: Any) -> tuple[str, dict]:
        """The observation text for `prompt_ids` and the `info` telling the agent how to continue."""
        obs = self.decode(prompt_ids)
        self._last_obs = obs
        info = {"max_new_tokens": int(max_new_tokens), "stop": list(stop), "prompt_token_ids": list(prompt_ids)}
        info.update(extra)
        return obs, info

    def final_info(self) -> dict:
        """The continuation keys of the step that ends an episode: its observation is empty and
        nothing is left to write. Every step's `info` has them, so vector envs and agents need no
        special case for the last one."""
        return {"max_new_tokens": 0, "stop": [], "prompt_token_ids": []}

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None
