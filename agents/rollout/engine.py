"""The rollout-engine interface: token ids in, token ids with log-probabilities out.

Every engine (transformers `hf`, `vllm`, routed R2R) takes a batch of `GenerationRequest`s and
returns, per request, `n` `Completion`s. Log-probabilities are those of the sampling distribution:
log softmax(logits / temperature) at each sampled token, before top-p truncation, which is what
the trainer recomputes for importance ratios (see README, "Log-probabilities").

Multi-step episodes (Delethink's chunks) go through `stream`: each finished request may ask for the
next request of its key. An engine may serve it natively (`HFEngine` with refill: a key's next chunk
starts as soon as its last one ends); any other runs it in rounds of `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Hashable, Mapping
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
    """What the collector, evaluation and the learner need from a rollout engine, and all they use.

    An engine may also serve `stream(requests, follow_up)` natively (`HFEngine`); the module's `stream`
    runs any other in rounds of `generate`."""

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


FollowUp = Callable[[Hashable, Completion], "GenerationRequest | None"]
"""`follow_up(key, completion)`: called as each request of `stream` finishes; returns that key's next
request (a trace's next chunk), or None when the key is done."""


def _one_sample(req: GenerationRequest) -> GenerationRequest:
    if req.n != 1:
        raise ValueError(f"stream takes requests of n=1 (one trace per key); got n={req.n}")
    return req


def stream_in_rounds(engine: Engine, requests: Mapping[Hashable, GenerationRequest], follow_up: FollowUp,
                     before_round: Callable[[], None] | None = None) -> None:
    """`stream` as rounds of `generate`: round k holds every live key's k-th request, so a key whose
    request ended early waits for the round's longest. `before_round` runs before each round (the
    asynchronous rollout rank loads new weights there)."""
    live = {key: _one_sample(req) for key, req in requests.items()}
    while live:
        if before_round is not None:
            before_round()
        outs = engine.generate(list(live.values()))
        following = {}
        for key, out in zip(live, outs):
            nxt = follow_up(key, out[0])
            if nxt is not None:
                following[key] = _one_sample(nxt)
        live = following


def stream(engine: Engine, requests: Mapping[Hashable, GenerationRequest], follow_up: FollowUp,
           before_round: Callable[[], None] | None = None) -> None:
    """Generate every request (`n=1` each) and the follow-ups `follow_up` asks for, as they finish: with
    the engine's own `stream` where it has one and no `before_round` is given, else in rounds."""
    native = getattr(engine, "stream", None)
    if native is not None and before_round is None:
        native(requests, follow_up)
    else:
        stream_in_rounds(engine, requests, follow_up, before_round)


ENGINES: Registry[Callable[..., Engine]] = Registry("engine")
"""Each engine's factory `fn(policy, seed, tensor_parallel_size, lora_merge, stream) -> Engine`; it imports
its engine when called, so that naming an engine loads neither transformers' decode loop nor vLLM."""


@ENGINES.register("hf")
def _hf(policy: Policy, seed: int, tensor_parallel_size: int, lora_merge: bool, stream: bool) -> Engine:
    from .hf.engine import HFEngine

    return HFEngine(policy, seed=seed, lora_merge=lora_merge, refill=stream)


@ENGINES.register("vllm")
def _vllm(policy: Policy, seed: int, tensor_parallel_size: int, lora_merge: bool, stream: bool) -> Engine:
    from .vllm import VLLMEngine

    return VLLMEngine(policy, seed=seed, tensor_parallel_size=tensor_parallel_size)  # streams in rounds


def make_engine(name: str, policy: Policy, seed: int, tensor_parallel_size: int = 1, lora_merge: bool = False,
                stream: bool = False) -> Engine:
    """A rollout engine by name; `tensor_parallel_size` shards vLLM's copy of the model over GPUs,
    `lora_merge` makes the hf engine decode a LoRA policy from merged weights, and `stream` makes it
    refill the places of finished rows with pending requests (`HFEngine`'s `refill`)."""
    return ENGINES.get(name)(policy, seed, tensor_parallel_size, lora_merge, stream)
