"""`GRPOConfig`: every flag of `thinkgym train`, each naming the paper it comes from.

Names follow TRL's `GRPOConfig` where TRL has one. A YAML file whose keys are these field names
(or the same flags on the command line) configures a run.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from numbers import Real
from typing import Any, Callable, Mapping

import gymnasium as gym

import thinkgym

from ..rollout.engine import ENGINES
from ..trackers import parse_report_to

DTYPES = (None, "float32", "bfloat16", "float16")
PARALLELISMS = ("ddp", "fsdp")
OFF_POLICY_CORRECTIONS = ("tis", "mis")
LORA_ROLLOUTS = ("apply", "merge")
LR_SCHEDULERS = ("constant", "linear", "cosine")
# Estimators that compare a rollout with the rest of its group: one rollout per prompt has no advantage.
GROUP_ESTIMATORS = ("grpo", "rloo")


def _at_least(low: float, note: str = "") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}" + (f" ({note})" if note else "")


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > low), f"> {low}"


# The accepted values of each numeric field (None, where a field allows it, is always accepted).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: _at_least(1) for name in ("vllm_tensor_parallel_size", "lora_r", "num_generations", "prompts_per_step", "steps",
                                        "num_iterations", "minibatches", "micro_batch_size", "max_nonfinite_steps", "sft_seeds",
                                        "eval_samples", "max_completion_length", "tis_cap")},
    "max_staleness": _at_least(0, "0 trains every step on rows of the weights it starts from"),
    "mis_bound": _above(0),
    **{name: _at_least(0) for name in ("beta", "entropy_coef", "mgpo_lambda", "max_resample_rounds", "monitor_prompts",
                                        "train_prompts", "warmup_steps", "weight_decay", "sft_steps", "seed", "save_every",
                                        "save_total_limit", "eval_every", "eval_prompts", "eval_temperature", "log_completions_every")},
    **{name: _above(0) for name in ("lora_alpha", "temperature", "learning_rate", "sft_learning_rate")},
    "save_every": _at_least(0, "0 saves only at the end and on SIGINT/SIGTERM"),
    "save_total_limit": _at_least(0, "0 keeps every checkpoint"),
    "monitor_prompts": _at_least(0, "0 uses the step's own rollouts"),
    "train_prompts": _at_least(0, "0 draws fresh prompts every step"),
    "eval_every": _at_least(0, "0 never evaluates"),
    "eval_temperature": _at_least(0, "0 is greedy"),
    "max_grad_norm": ((lambda v: v > 0), "> 0 (inf turns clipping off)"),
    "lora_dropout": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "top_p": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "epsilon": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "sft_gate": ((lambda v: 0 <= v <= 1), "in [0, 1] (0: no gate)"),
    "sft_gate_prompts": _at_least(1),
    "sft_gate_round": _at_least(1),
    "sft_gate_learning_rate": _at_least(0, "0 is half of sft_learning_rate"),
    "sft_max_steps": _at_least(0, "0 is sft_steps"),
}
# The demo's recipe (examples/demo.py), one place for the scripts built on it (benchmarks/markovian_vs_longcot.py):
# its warm start (2,000 demonstrations, 900 SFT steps, then gated rounds up to 1,800 until 0.8 greedy) and its GRPO.
# Why each value: the demo's --help and benchmarks/RESULTS.md.
DEMO_RECIPE: dict[str, Any] = {
    "sft_steps": 900, "sft_learning_rate": 1.5e-3, "sft_seeds": 2000, "sft_gate": 0.8, "sft_max_steps": 1800,
    "steps": 30, "prompts_per_step": 8, "num_generations": 8, "temperature": 1.0, "learning_rate": 2e-5, "loss_type": "delethink",
    "scale_rewards": "none", "epsilon_high": 0.28, "micro_batch_size": 64, "eval_every": 0, "save_every": 0, "log_completions_every": 10}
_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "dict": "a mapping",
             "list": "a list"}


@dataclass
class GRPOConfig:
    # -- what to train ------------------------------------------------------------------------
    env: str = "DelethinkDemo-v0"
    """Registered environment id (any thinkgym id, or your own)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (for example `{"chunk_size": 8192}`)."""
    model: str = "tiny"
    """A local folder, a hub id, or `tiny` (the embedded default built from a config)."""
    engine: str = "hf"
    """Rollout engine: `hf` (transformers, CPU or GPU) or `vllm` (weights synced in place each step)."""
    device: str | None = None
    """`cuda` or `cpu`; by default CUDA in bf16 where there is a GPU, else the CPU in fp32. Under torchrun
    each rank takes cuda:LOCAL_RANK."""
    dtype: str | None = None
    """Weights' dtype: `float32`, `bfloat16` or `float16`; by default bf16 on a GPU and fp32 on the CPU.
    fp32 on a GPU reproduces a CPU run's numerics class (the tiny policy's learning checks)."""
    vllm_tensor_parallel_size: int = 1
    """GPUs that the `vllm` engine shards its copy of the model over (vLLM's tensor parallelism), for
    models too big for one GPU's rollouts."""
    stream_rollouts: bool = False
    """The `hf` engine's refill (static cache): one decoder run per collection in which a finished row's
    place takes a pending request, and a Delethink trace's next chunk starts as soon as its last one ends
    instead of waiting for the round's longest chunk. Off by default: it draws the sampling noise over
    other batches, so a seed's samples (and the demo's numbers) change; its speed-up is not yet measured
    on a GPU. The asynchronous rollout rank keeps rounds (it loads new weights between them)."""

    # -- several GPUs and adapters (README, "Several GPUs") ------------------------------------
    parallelism: str = "ddp"
    """How the ranks of `torchrun` share the learner: `ddp` (each holds every weight, its fp32 master and
    Adam state, about 16 bytes per parameter; gradients are all-reduced) or `fsdp` (FSDP2 `fully_shard`:
    fp32 weights, gradients and Adam state sharded over the ranks; each rank rolls out from a whole
    copy of the weights gathered after every step, and checkpoints are sharded). One process ignores it."""
    use_peft: bool = False
    """Train a LoRA adapter (peft) on the frozen model: only the adapter is trained, optimised and
    checkpointed."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha: the adapter's output is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input while training. TRL's default is 0.05; 0 keeps the learner's policy
    the one that sampled (the importance ratio of the first iteration stays 1)."""
    lora_target_modules: list[str] | None = None
    """Names of the modules to adapt (one entry is a regex, or `all-linear`: every linear layer but the
    LM head); None is peft's default for the architecture (q_proj and v_proj for Qwen2 and Llama)."""
    lora_rollout: str = "apply"
    """How the `hf` engine samples from the adapted policy: `apply` (the peft model itself, as the learner
    computes it) or `merge` (a copy of the adapted weights with the adapter merged, refreshed after each
    step: fused decode kernels, for the memory of the adapted matrices; merging rounds the adapter into
    16-bit weights, so the learner recomputes the old log-probabilities, as with vLLM). The `vllm` engine
    always syncs merged weights."""

    # -- sampling -----------------------------------------------------------------------------
    num_generations: int = 8
    """G, rollouts per prompt; a group shares one `reset(seed)` (DeepSeekMath GRPO)."""
    prompts_per_step: int = 8
    """Prompts (groups) per step; a step trains on prompts_per_step × num_generations rollouts."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are taken under softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""

    # -- objective ----------------------------------------------------------------------------
    loss_type: str = "dapo"
    """The surrogate and its normalisation: `grpo`, `dapo` (token mean over the whole step; DAPO), `dr_grpo`
    (Dr. GRPO), `delethink` (trace-length normalisation; Markovian Thinker Eq. 3), `gspo` (sequence ratio;
    GSPO) or `cispo` (clipped stop-gradient IS weight on every token, capped at 1 + epsilon_high; MiniMax-M1),
    or one you registered (`thinkgym.agents.learner.losses`)."""
    advantage_estimator: str = "grpo"
    """`grpo` (group-relative), `rloo` (leave-one-out) or `raw` (the reward is the advantage). A reward that
    already is the advantage (`adaptthink`) is always used raw."""
    scale_rewards: str = "group"
    """Divide centred rewards by the group std (`group`), the batch std (`batch`, Lite PPO) or not
    at all (`none`, as Dr. GRPO recommends)."""
    epsilon: float = 0.2
    """Lower clip range ε of the ratio (PPO)."""
    epsilon_high: float = 0.28
    """Upper clip range (clip-higher, DAPO): keeps low-probability exploratory tokens alive. With `cispo` the
    importance weight's cap is 1 + epsilon_high."""
    beta: float = 0.0
    """KL coefficient to a frozen reference (k3 estimator). 0 loads no reference model (DAPO, Dr. GRPO)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient; One-shot RLVR uses 0.001 for post-saturation generalisation."""
    mgpo_lambda: float = 0.0
    """λ of MGPO's weight exp(−λ·KL(Bern(p)‖Bern(0.5))) on each group's advantages (VibeThinker); 0 is off."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and sample more prompts to refill the step (DAPO)."""
    max_resample_rounds: int = 3
    """How many extra collection rounds dynamic sampling may use per step."""
    mask_truncated_completions: bool = False
    """Exclude rollouts that ran out of budget from the loss (DAPO's overlong filtering)."""
    tis_cap: float = 2.0
    """Truncated importance sampling (`off_policy_correction=tis`): weight each token by min(π_trainer/π_engine,
    cap) when the engine is not the trainer (vLLM, stale asynchronous rows), correcting their mismatch (Yao et
    al.; used by Delethink)."""
    off_policy_correction: str = "tis"
    """How rows sampled by other weights than the learner's (vLLM's kernels, or asynchronous rollouts' older
    versions) are corrected, against the log-probs the rows carry: `tis` weights each token by
    min(π_learner/π_behaviour, tis_cap); `mis` (sequence-level masked IS) weights each row by its geometric-mean
    ratio exp(mean_t log ρ_t) and gives zero weight to rows where |mean_t log ρ_t| > mis_bound."""
    mis_bound: float = 0.1
    """The largest |mean per-token log ratio| of a row that `off_policy_correction=mis` keeps (0.1: a
    geometric-mean ratio within [0.905, 1.105])."""
    max_completion_length: int | None = None
    """The constant of `dr_grpo`; by default the env's first `max_new_tokens`."""
    reward: str = ""
    """Reward spec, e.g. `correctness + 0.5*laser_d`; empty uses the environment's own reward. Each sample
    carries the thinking budget it was drawn under (the default length scale of `cosine` and `overlong`);
    `adaptthink` forces its openings on each group and, before the first update, samples every training
    prompt with the starting policy for its reference accuracies."""
    reward_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword arguments per reward name in `reward`."""
    siri: dict[str, Any] = field(default_factory=dict)
    """SIRI's length schedule (`l_min`, `l_max`, `period`, `shape`); empty is off. Each step's length becomes
    the environments' thinking budget (Delethink: the chunk cap whose budget fits it)."""
    monitor_prompts: int = 32
    """Prompts of a fixed monitor set (seeds apart from training and evaluation), rolled out num_generations
    times whenever a stateful reward is due to recompute its state from them (LASER-D's targets, every
    `monitor_every` steps; the paper's set is 500 training prompts). 0 recomputes from the step's own rollouts."""

    train_prompts: int = 0
    """Train on a fixed pool of this many prompts (seeds), in order and again each epoch, as RL datasets
    are used; per-prompt reward state (HAPO's shortest-correct history) needs prompts to recur.
    0 draws fresh prompts every step."""

    # -- asynchronous rollouts (README, "Asynchronous rollouts") --------------------------------
    async_rollouts: bool = False
    """The learner trains while rollouts sample ahead with the weights they hold, which it hands over after
    every optimizer step; every row carries its policy version (`agents/learner/async_grpo.py`). In one process:
    a rollout thread with its own copy of the weights on the same device (on a GPU, its own CUDA stream, so that
    decode can overlap the learner; on one H100 it measured 0.92x the synchronous step with a default-priority
    stream, and the highest-priority one it now uses is not measured yet, RESULTS.md). Under torchrun: rank 0
    learns and the other ranks roll out. Off: collect, then learn (under torchrun every rank does both: data
    parallelism)."""
    max_staleness: int = 1
    """With `async_rollouts`: the most optimizer steps a row's policy version may lag the learner's; rollout
    workers wait for newer weights rather than exceed it. 0 is synchronous (the same updates as one process)."""

    # -- optimisation -------------------------------------------------------------------------
    steps: int = 50
    """RL steps (collection + updates)."""
    learning_rate: float = 1e-6
    """AdamW learning rate (1e-6 is the R1-Distill-1.5B recipes' value; the tiny demo uses more)."""
    lr_scheduler: str = "constant"
    """`constant`, `linear` or `cosine` decay after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    num_iterations: int = 1
    """Passes over each batch of rollouts (μ in GRPO); ratios are always against the old policy."""
    minibatches: int = 1
    """Optimizer steps per pass: the rollouts are split into this many mini-batches (Delethink: 2)."""
    micro_batch_size: int = 16
    """Rows per forward/backward; gradients accumulate over a mini-batch."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: long rows fit in memory, for about a
    third more compute. The optimizer keeps fp32 master weights whenever the model is in bf16/fp16."""
    max_grad_norm: float = 1.0
    """Gradient clipping: the largest global gradient norm; `inf` turns clipping off (the norm is still logged)."""
    max_nonfinite_steps: int = 5
    """A NaN/inf loss skips its optimizer step; this many in a row stops the run."""
    sft_steps: int = 0
    """Warm-start SFT steps on the task's demonstrations before RL (0 is none)."""
    sft_learning_rate: float = 1e-3
    """Learning rate of the warm start."""
    sft_seeds: int = 400
    """Demonstrations (seeds) in the warm-start set; they never overlap the RL or eval seeds."""
    sft_gate: float = 0.0
    """Greedy accuracy that the warm start must reach on `sft_gate_prompts` validation problems (their own
    seeds, never the eval or RL ones) before RL starts; below it, SFT goes on in rounds of `sft_gate_round`
    steps (each a fresh warm-up and decay) up to `sft_max_steps`. 0 turns the gate off. Whether SFT learns a
    skill can hinge on a machine's floating-point details; the gate makes the start, not the step count, fixed."""
    sft_gate_prompts: int = 64
    """Validation problems of the warm-start gate."""
    sft_gate_round: int = 300
    """SFT steps of each extra round when the warm start is below its gate."""
    sft_gate_learning_rate: float = 0.0
    """Peak learning rate of the extra rounds (0: half of `sft_learning_rate`): a start that missed a skill at
    one rate tends to learn it at a lower one."""
    sft_max_steps: int = 0
    """Most SFT steps in all when gated (0: `sft_steps`, so one round and a verdict)."""
    sft_extra_envs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """More formats for the warm start, env id -> its kwargs, e.g. `{"LongCoT-v0": {"max_thinking_tokens": 192}}`:
    the same SFT seeds' demonstrations in each join the rows, and the gate checks each env's greedy accuracy
    (it passes when every env does). A start trained on one format's rows can fail in another: Delethink's
    chunks never show a context longer than one chunk."""

    # -- bookkeeping --------------------------------------------------------------------------
    output_dir: str = ""
    """TensorBoard logs, checkpoints and plots go here; empty is a new time-stamped folder under runs/, which
    runs/latest links to (with `resume`: the run runs/latest links to)."""
    seed: int = 0
    """Seeds the tiny model's init, the warm start, the sampler and the minibatch order. The training
    prompts are the same for every seed."""
    save_every: int = 10
    """Checkpoint every N steps (and on SIGINT/SIGTERM, and at the end)."""
    save_total_limit: int = 3
    """Keep the newest N checkpoints, besides checkpoint-0 (the weights RL started from); 0 keeps all.
    A 1.5B policy's checkpoint, with fp32 master weights and Adam state, is about 15 GB."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir."""
    eval_every: int = 10
    """Evaluate on held-out seeds at step 0, every N steps and at the end (0 is never)."""
    eval_prompts: int = 64
    """Held-out prompts per evaluation."""
    eval_samples: int = 4
    """Samples per held-out prompt when eval_temperature > 0 (avg@n and pass@k for every k <= n); greedy
    evaluation takes one."""
    eval_temperature: float = 0.0
    """Evaluation temperature: 0 is greedy (accuracy only), above 0 samples eval_samples per prompt."""
    log_completions_every: int = 10
    """Log one sample completion as text every N steps."""
    report_to: str = "tensorboard"
    """Where metrics go, as TRL's report_to: tensorboard (what `thinkgym plot` reads), wandb, trackio, or several
    comma-separated ('tensorboard,wandb'). wandb and trackio are not installed with thinkgym (pip install wandb)."""

    def __post_init__(self) -> None:
        from .advantages import ADVANTAGE_ESTIMATORS, SCALE_REWARDS
        from .losses import POLICY_LOSSES

        for f in fields(self):
            setattr(self, f.name, coerce_field(f.name, str(f.type), getattr(self, f.name)))
        self._check_ranges()
        POLICY_LOSSES.get(self.loss_type)
        ADVANTAGE_ESTIMATORS.get(self.advantage_estimator)
        ENGINES.get(self.engine)
        for name, choices in (("dtype", DTYPES), ("scale_rewards", SCALE_REWARDS),
                              ("lr_scheduler", LR_SCHEDULERS), ("parallelism", PARALLELISMS), ("lora_rollout", LORA_ROLLOUTS),
                              ("off_policy_correction", OFF_POLICY_CORRECTIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; valid: {list(choices)}")
        if self.num_generations < 2 and self.advantage_estimator in GROUP_ESTIMATORS:
            raise ValueError(f"num_generations must be >= 2 for advantage_estimator={self.advantage_estimator!r} (a group of one "
                             f"rollout has zero advantage); got {self.num_generations}. advantage_estimator='raw' takes 1")
        if self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high must be >= epsilon ({self.epsilon}): the upper clip range is the wider one; "
                             f"got {self.epsilon_high}")
        if self.sft_max_steps and self.sft_max_steps < self.sft_steps:
            raise ValueError(f"sft_max_steps must be 0 (= sft_steps) or >= sft_steps={self.sft_steps}; got {self.sft_max_steps}")
        if self.eval_every and not self.eval_prompts:
            raise ValueError(f"eval_prompts must be >= 1 when eval_every={self.eval_every} (eval_every=0 turns evaluation off)")
        for name in ("env", "model", "output_dir"):  # output_dir "" (the default) is a new time-stamped folder under runs/
            if not getattr(self, name).strip() and (name != "output_dir" or self.output_dir):
                raise ValueError(f"{name} must be a non-empty string")
        bad = sorted(k for k, v in self.reward_params.items() if not isinstance(v, Mapping))
        if bad:
            raise ValueError(f"reward_params must map each reward name to a mapping of its keyword arguments; {bad} are not")
        self._check_sft_extra_envs()
        self._check_lora()
        parse_report_to(self.report_to)
        self._check_async()

    def _check_ranges(self) -> None:
        """Every numeric field within its accepted values (RANGES), and finite (max_grad_norm may be inf)."""
        for name, (ok, accepted) in RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not ok(value) or (name != "max_grad_norm" and not math.isfinite(value)):
                raise ValueError(f"{name} must be {accepted}; got {value!r}")

    def _check_sft_extra_envs(self) -> None:
        unknown = sorted(k for k in self.sft_extra_envs if k not in gym.registry)
        if unknown:
            raise ValueError(f"sft_extra_envs: env ids {unknown} are not registered; registered thinkgym ids: {thinkgym.ENV_IDS}")
        if self.env in self.sft_extra_envs:
            raise ValueError(f"sft_extra_envs must not name env={self.env!r}: the warm start always trains on and gates it")
        bad = sorted(k for k, v in self.sft_extra_envs.items() if not isinstance(v, Mapping))
        if bad:
            raise ValueError(f"sft_extra_envs must map each env id to a mapping of its keyword arguments; {bad} do not")

    def _check_async(self) -> None:
        """What the asynchronous trainer does not do (yet): each of these changes a step's collection or its
        learner in ways that the rollout ranks would have to follow."""
        if not self.async_rollouts:
            return
        unsupported = {"dynamic_sampling": self.dynamic_sampling, "siri": bool(self.siri), "use_peft": self.use_peft,
                       "parallelism='fsdp'": self.parallelism == "fsdp"}
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"async_rollouts=True does not support {bad}; turn them off or set async_rollouts=False")

    def _check_lora(self) -> None:
        if not self.use_peft:
            if self.lora_rollout != "apply":
                raise ValueError(f"lora_rollout={self.lora_rollout!r} needs use_peft=True (there is no adapter to merge)")
            return
        targets = self.lora_target_modules
        if targets is not None and (not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets)):
            raise ValueError(f"lora_target_modules must be a non-empty list of module names (or None for peft's default); got {targets!r}")
        if self.parallelism == "fsdp":
            raise ValueError("use_peft=True with parallelism='fsdp' is not supported: the adapter is small and the frozen model is "
                             "held in 16 bits (2 bytes per parameter), so use parallelism='ddp'")
        if self.lora_rollout == "merge" and self.engine != "hf":
            raise ValueError(f"lora_rollout='merge' is a setting of the hf engine; engine={self.engine!r} always syncs merged weights")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GRPOConfig":
        """A config from a mapping of field names (a YAML file's); each value is converted to its field's
        type (PyYAML reads `1e-4` as a string) or refused, naming the key and the type expected."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a config must be a mapping of GRPOConfig keys to values; got a {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def coerce_field(name: str, kind: str, value: Any) -> Any:
    """`value` as a value of field `name` of type `kind` (a string parsed as the command line parses it, an
    integral float as an int, an int as a float), or a ValueError naming the field and the type expected."""
    base = kind.split("[")[0].split(" |")[0]
    optional = "None" in kind
    if value is None and optional:
        return None
    if isinstance(value, str) and base != "str":
        try:
            value = parse_field_value(kind, value)
        except (ValueError, argparse.ArgumentTypeError):
            pass  # refused below, by name
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if base == "float" and isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    if (base == "str" and isinstance(value, str)) or (base == "list" and isinstance(value, list)):
        return value
    if base == "dict" and isinstance(value, Mapping):
        return dict(value)
    if base in _EXPECTED:
        raise ValueError(f"{name} must be {_EXPECTED.get(base, base)}{' or null' if optional else ''}; "
                         f"got {value!r} ({type(value).__name__})")
    return value


@cache
def field_docs(cls: type = GRPOConfig) -> dict[str, str]:
    """Each field's docstring (the string right after it in the class body), the one source of the CLI's
    `--help`, as TRL's flags carry their fields' help."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {node.target.id: " ".join(doc.value.value.split()) for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def parse_field_value(kind: Any, text: str) -> Any:
    """A command-line string as a value of a field of type `kind` (JSON for dicts and lists)."""
    kind = str(kind)
    if "dict" in kind or "list" in kind:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"expected JSON, got {text!r}: {exc}") from exc
    if "bool" in kind:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if "None" in kind and text.lower() == "none":
        return None
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["key=value", ...]` over GRPOConfig's fields, each value parsed by its field's type."""
    types = {f.name: f.type for f in fields(GRPOConfig)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in types:
            raise ValueError(f"override {pair!r} is not key=value over a GRPOConfig field; valid keys: {sorted(types)}")
        out[key] = parse_field_value(types[key], text)
    return out
