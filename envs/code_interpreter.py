"""CoRT (arXiv 2506.09820): reasoning with a Python interpreter, `CodeInterpreter-v0`.

The policy writes ordinary ```python fenced blocks while it thinks. `info["stop"]` holds the
closing fence, so generation pauses after each block; the env runs the code in the episode's
sandboxed interpreter (state persists from block to block) and appends
"```output\\n{stdout or traceback}\\n```\\n", cut to 800 characters (first and last 400) as CoRT
does. The context is append-only, and `info["env_token_spans"]` lists the [start, end) ranges of
`prompt_token_ids` the env inserted, so a trainer can mask them out of the loss.

At most `max_calls` blocks are run. The output of the one before the last carries a notice; later
blocks are not run, and their output says so. Reward, as CoRT's Eq. 3: correctness (math-verify on
the last `\\boxed{}` after `</think>`) + ω·Rc, with Rc = −1 if no code ran successfully (every run
failed, or none was written) and ω = `code_reward` = 0.1. "Failed" is the sandbox's status (an
exception, a timeout, a crash); CoRT's code also counts an empty output as failed, we do not.

Where CoRT re-runs earlier blocks to rebuild state, here one persistent interpreter per episode
keeps it (envs/sandbox.py). The thinking budget counts the inserted outputs too, as CoRT's
remaining-length rule does; an output that would not fit ends the episode (truncated).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .core import TokenAction
from .reasoning import ReasoningEnv
from .sandbox import Sandbox, SandboxConfig

CODE_OPEN = "```python"
STOP = "```\n"
# CoRT's user-message instruction, and its Prompt-Hint placed right after `<think>`.
INSTRUCTION = ("\nPlease integrate natural language reasoning with python programs to solve the problem above, "
               "and put your final answer within \\boxed{}.")
PROMPT_HINT = "Okay, let's try to solve this problem step by step using multiple python code calls.\n"
NOTICE_NEAR = "[SYSTEM]\nYou have one code execution left. After it, code will no longer be run."
# CoRT's notice (Appendix B.3), here the output of every block past the cap.
NOTICE_CAP = ("[SYSTEM]\nYou have exceeded the allowed number of code executions. You can no longer write or run code. "
              "Please continue solving the problem using your reasoning and analytical skills.")


def closed_code_block(text: str) -> str | None:
    """The code of a ```python block that `text` ends by closing, or None."""
    start = text.rfind(CODE_OPEN)
    if start < 0:
        return None
    body = text[start + len(CODE_OPEN):].rstrip(" \t\n")
    if not body.endswith("```") or "```" in body[:-3] or not body.startswith(("\n", " ")):
        return None
    return body[:-3].strip("\n")


def cut_middle(text: str, limit: int) -> tuple[str, bool]:
    """CoRT's truncation: the first and last limit/2 characters joined by "..."."""
    if len(text) <= limit:
        return text, False
    half = limit // 2
    return text[:half] + "..." + text[len(text) - half:], True


class CodeInterpreterEnv(ReasoningEnv):
    """One context with tool calls. Defaults are CoRT's: 15 calls, 800-char outputs, ω = 0.1."""

    def __init__(self, task: Any = "arithmetic_code", max_calls: int = 15, output_chars: int = 800,
                 code_reward: float = 0.1, instruction: bool = True, prompt_hint: bool = False,
                 sandbox: SandboxConfig | dict | None = None, unsafe: bool = False,
                 max_thinking_tokens: int = 16384, **kwargs: Any):
        if not isinstance(max_calls, int) or max_calls < 1:
            raise ValueError(f"max_calls must be an integer >= 1; got {max_calls!r}")
        if not isinstance(output_chars, int) or output_chars < 16:
            raise ValueError(f"output_chars must be an integer >= 16; got {output_chars!r}")
        if not isinstance(code_reward, (int, float)):
            raise ValueError(f"code_reward must be a number (CoRT's ω, 0.1); got {code_reward!r}")
        if sandbox is not None and not isinstance(sandbox, (SandboxConfig, dict)):
            raise ValueError(f"sandbox must be a SandboxConfig, a dict of its fields, or None; got {type(sandbox).__name__}")
        config = sandbox if isinstance(sandbox, SandboxConfig) else SandboxConfig(**(sandbox or {}))
        self.sandbox_config = SandboxConfig(**{**asdict(config), "unsafe": config.unsafe or bool(unsafe)})
        self.max_calls, self.output_chars, self.code_reward = max_calls, output_chars, float(code_reward)
        self.instruction, self.prompt_hint = bool(instruction), bool(prompt_hint)
        self._sandbox: Sandbox | None = None
        super().__init__(task, max_thinking_tokens=max_thinking_tokens, stop=(STOP,), **kwargs)

    def format_prompt(self, prompt: str) -> str:
        text = super().format_prompt(prompt + INSTRUCTION if self.instruction else prompt)
        return text + PROMPT_HINT if self.prompt_hint else text

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        self.close()
        self.env_spans: list[tuple[int, int]] = []
        self.blocks = self.failures = self.refused = self.truncated_outputs = 0
        self.exec_time = 0.0
        obs, info = super().reset(seed=seed, options=options)
        info["env_token_spans"] = []
        return obs, info

    def parse_action(self, action: Any, budget: int) -> tuple[list[int], bool, bool]:
        """As TextEnv's, but a plain string that ends by closing a python block stopped there."""
        ids, ended, malformed = super().parse_action(action, budget)
        if ended and not malformed and not isinstance(action, TokenAction):
            eos = self.tokenizer.eos_token
            if not (eos and eos in action) and closed_code_block(self.decode(ids)) is not None:
                ended = False
        return ids, ended, malformed

    # -- the tool ----------------------------------------------------------------------------------
    def tool_output(self, code: str) -> str:
        """Run one block (or refuse it past the cap) and format CoRT's output block."""
        self.blocks += 1
        if self.blocks > self.max_calls:
            self.refused += 1
            return f"```output\n{NOTICE_CAP}\n```\n"
        if self._sandbox is None:
            self._sandbox = Sandbox(self.sandbox_config)
        result = self._sandbox.run(code)
        self.exec_time += result.time
        self.failures += not result.ok
        text, cut = cut_middle(result.output.rstrip("\n"), self.output_chars)
        self.truncated_outputs += cut or result.truncated
        if self.blocks == self.max_calls - 1:
            text += "\n" + NOTICE_NEAR
        return f"```output\n{text}\n```\n"

    def continue_after(self, ids: list[int]) -> tuple[str, float, bool, bool, dict]:
        code = closed_code_block(self.decode(ids))
        context = self._prompt_ids + ids
        inserted = self.encode(self.tool_output(code)) if code is not None else []
        remaining = self.max_thinking_tokens - (len(context) + len(inserted) - len(self.query_ids))
        if remaining <= 0:  # as CoRT: out of budget, the episode ends without the new output
            return self.finish(None, terminated=False)
        if inserted:
            self.env_spans.append((len(context), len(context) + len(inserted)))
        self._prompt_ids = context + inserted
        self._budget = remaining
        obs, info = self.observe(self._prompt_ids, remaining, self.stop, env_token_spans=list(self.env_spans),
                                 code_calls=self.blocks - self.refused)
        return obs, 0.0, False, False, info

    # -- end of episode ----------------------------------------------------------------------------
    def finish(self, text: str | None, terminated: bool, malformed: bool = False):
        obs, _, term, trunc, info = super().finish(text, terminated, malformed)
        self.close()
        runs = self.blocks - self.refused
        components = info["reward_components"]
        components["code"] = -self.code_reward if runs == 0 or self.failures == runs else 0.0
        info.update(code_calls=runs, code_failures=self.failures, code_calls_refused=self.refused,
                    code_time_s=self.exec_time, code_outputs_truncated=self.truncated_outputs,
                    env_token_spans=list(self.env_spans))
        return obs, float(sum(components.values())), term, trunc, info

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
