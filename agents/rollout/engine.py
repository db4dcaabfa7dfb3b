"""The rollout-engine interface: token ids in, token ids with log-probabilities out.

Every engine (transformers `hf`, `vllm`, routed R2R) takes a batch of `GenerationRequest`s and
returns, per request, `n` `Completion`s. Log-probabilities are those of the sampling distribution:
log softmax(logits / temperature) at each sampled token, before top-p truncation, which is what
the trainer recomputes for importance ratios (see README, "Log-probabilities").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence

from thinkgym.registry import Registry

from ..types import Step

if TYPE_CHECKING:
    from ..policy import Policy

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class GenerationRequest:
    """One prompt to continue. `prefix_ids` are forced as the first response tokens (AdaptThink)."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: Sequence[str] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    prefix_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.n < 1:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and n >= 1; got {self.temperature}, {self.top_p}, {self.n}")


@dataclass
class Completion:
    """Generated ids (EOS excluded, stop string included), their text and log-probabilities.

    `eos_logprob` is the log-probability of the EOS that ended it (`finish_reason == "eos"`). The env
    never sees that token, but training keeps it, as TRL and verl do, so that RL teaches when to stop."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason
    eos_logprob: float | None = None

    def __post_init__(self) -> None:
        if self.finish_reason == "eos" and self.eos_logprob is None:
            raise ValueError("a completion that ended with EOS needs eos_logprob, the log-probability of that EOS, "
                             "for the training row that ends with it")

    def step(self, prompt_ids: Sequence[int], eos_token_id: int, version: int = 0) -> Step:
        """The episode's record of this completion of `prompt_ids`: what the env got, the EOS that ended it
        (never shown to the env) with its log-probability, for the training row, and the policy version that
        sampled it (asynchronous rollouts)."""
        eos = (eos_token_id, self.eos_logprob) if self.finish_reason == "eos" else None
        return Step(list(prompt_ids), list(self.token_ids), list(self.logprobs), self.finish_reason, eos, version)


class Engine(Protocol):
    """What the collector, evaluation and the learner need from a rollout engine, and all they use."""

    policy: Policy
    """The policy it samples from: its tokenizer and EOS are the env's and the collector's."""
    logprobs_are_trainers: bool
    """Whether its log-probabilities come from the trainer's own model and kernels (then the importance
    ratio at the first iteration is exactly 1 and no truncated-IS correction is needed)."""

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]: ...

    def sync_weights(self) -> None:
        """Make generation use the policy's current weights (after an optimizer step)."""

    def seed(self, seed: int) -> None:
        """Restart the sampling RNG from `seed` (evaluations that must draw the same samples each time)."""

    def get_rng_state(self) -> Any:
        """The sampling RNG's state, saved in checkpoints so that a resumed run draws what it would have."""

    def set_rng_state(self, state: Any) -> None: ...

    def close(self) -> None:
        """Free what the engine holds outside Python's reach (vLLM's engine core and process groups)."""


ENGINES: Registry[Callable[..., Engine]] = Registry("engine")
"""Each engine's factory `fn(policy, seed, tensor_parallel_size, lora_merge) -> Engine`; it imports its
engine when called, so that naming an engine loads neither transformers' decode loop nor vLLM."""


@ENGINES.register("hf")
def _hf(policy: Policy, seed: int, tensor_parallel_size: int, lora_merge: bool) -> Engine:
    from .hf.engine import HFEngine

    return HFEngine(policy, seed=seed, lora_merge=lora_merge)


@ENGINES.register("vllm")
def _vllm(policy: Policy, seed: int, tensor_parallel_size: int, lora_merge: bool) -> Engine:
    from .vllm import VLLMEngine

    return VLLMEngine(policy, seed=seed, tensor_parallel_size=tensor_parallel_size)


def make_engine(name: str, policy: Policy, seed: int, tensor_parallel_size: int = 1, lora_merge: bool = False) -> Engine:
    """A rollout engine by name; `tensor_parallel_size` shards vLLM's copy of the model over GPUs, and
    `lora_merge` makes the hf engine decode a LoRA policy from merged weights (`HFEngine`)."""
    return ENGINES.get(name)(policy, seed, tensor_parallel_size, lora_merge)
