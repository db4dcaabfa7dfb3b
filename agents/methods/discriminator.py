"""A reasoning model as discriminator: it judges a candidate answer, and its verdict gives a soft score.

After "When Reasoning Beats Scale" (arXiv 2505.03786): the policy reasons about the candidate and
ends with a JSON verdict `{"correct": true}` or `{"correct": false}`. The score is read from the
probability p of the verdict word's first token: s = p for true, 1 - p for false. The word is the
one in the last JSON object with a boolean `correct` (after repairing trailing commas and Python's
True/False); its character position is mapped to a generated-token index by decoding prefixes.

Engines report the log-probability of the sampled token only; decoding is greedy, so p is the
probability of the word the model chose. If no verdict can be parsed the score is `fail_value`
(0.5 by default: no evidence either way). An engine without log-probabilities gives the binary
score (1 for true, 0 for false), which the paper finds within 1.5% of the soft one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from thinkgym.envs.tokenizer import THINK_OPEN, decode, encode

from ..rollout.engine import Completion, Engine, GenerationRequest

FAIL_VALUE = 0.5
ASSISTANT_PREFIX = "\nOkay,"
PROMPT = (
    "Decide whether the candidate answer below is a correct answer to the question. First go through "
    "what the candidate does, step by step{using}; do not write a different answer yourself. "
    'End with a JSON object whose key "correct" is true or false, such as {{"correct": true}}.\n\n'
    "{context}Question: {question}\n\nCandidate:\n{candidate}\n"
)
_BLOCK = re.compile(r"\{[^{}]*\}")
_VERDICT_WORD = re.compile(r"""["']?correct["']?\s*:\s*["']?(true|false)\b""", re.IGNORECASE)


@dataclass(frozen=True)
class Judgement:
    """The discriminator's output on one candidate: soft score, verdict, and the verdict token's p."""

    score: float
    verdict: bool | None
    p: float | None
    text: str

    @property
    def parsed(self) -> bool:
        return self.verdict is not None


def parse_verdict(text: str) -> tuple[bool, int] | None:
    """The verdict of the last JSON object with a boolean `correct`, and where its word starts."""
    for block in reversed(list(_BLOCK.finditer(text))):
        repaired = re.sub(r",\s*}", "}", block.group(0))
        repaired = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", repaired))
        try:
            obj = json.loads(repaired)
        except ValueError:
            continue
        word = _VERDICT_WORD.search(block.group(0))
        if isinstance(obj, dict) and isinstance(obj.get("correct"), bool) and word is not None:
            return obj["correct"], block.start() + word.start(1)
    return None


def token_index(tokenizer: Any, token_ids: Sequence[int], char_pos: int) -> int:
    """Index of the generated token whose decoded text covers `char_pos` (binary search on prefixes)."""
    lo, hi = 0, len(token_ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(tokenizer, token_ids[: mid + 1])) > char_pos:
            hi = mid
        else:
            lo = mid + 1
    return lo


def soft_score(completion: Completion, tokenizer: Any, fail_value: float = FAIL_VALUE) -> Judgement:
    """s = p if the verdict is true, 1 - p if false; `fail_value` when there is no verdict."""
    text = decode(tokenizer, completion.token_ids)
    found = parse_verdict(text) if completion.token_ids else None
    if found is None:
        return Judgement(fail_value, None, None, text)
    verdict, pos = found
    if len(completion.logprobs) != len(completion.token_ids):
        return Judgement(float(verdict), verdict, None, text)
    p = math.exp(completion.logprobs[token_index(tokenizer, completion.token_ids, pos)])
    return Judgement(p if verdict else 1.0 - p, verdict, p, text)


class Discriminator:
    """Prompts a policy (through any engine) to judge candidates; greedy, as in the paper."""

    def __init__(self, engine: Engine, tokenizer: Any, max_new_tokens: int = 300, fail_value: float = FAIL_VALUE,
                 chat_template: bool | str = "auto", stop: Sequence[str] = ()):
        if chat_template not in (True, False, "auto"):
            raise ValueError(f"chat_template must be True, False or 'auto'; got {chat_template!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer; got {max_new_tokens!r}")
        self.engine, self.tokenizer = engine, tokenizer
        self.max_new_tokens, self.fail_value, self.stop = max_new_tokens, float(fail_value), list(stop)
        self.chat = chat_template is True or (chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None)))

    def prompt(self, question: str, candidate: str, context: str = "") -> str:
        """The judging prompt, ending inside an opened `<think>` with the assistant's first word."""
        using = " using the context" if context else ""
        text = PROMPT.format(using=using, context=f"{context.rstrip()}\n\n" if context else "", question=question.strip(),
                             candidate=candidate.strip())
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        else:
            text += "\n"
        opened = text.rstrip() if text.rstrip().endswith(THINK_OPEN) else text + THINK_OPEN
        return opened + ASSISTANT_PREFIX

    def judge(self, items: Sequence[tuple[str, str] | tuple[str, str, str]]) -> list[Judgement]:
        """Judge (question, candidate[, context]) triples in one batch."""
        requests = [GenerationRequest(encode(self.tokenizer, self.prompt(*item)), self.max_new_tokens, stop=self.stop,
                                      temperature=0.0) for item in items]
        outputs = self.engine.generate(requests) if requests else []
        return [soft_score(out[0], self.tokenizer, self.fail_value) for out in outputs]
