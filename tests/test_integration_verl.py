"""thinkgym envs in verl (`thinkgym.integrations.verl`). Each test runs twice: against verl's own classes where
verl imports (verl 0.9.1, built through hydra as verl's AgentLoopWorker builds it), and against a stand-in with
verl 0.9.1's field names and signatures, which always runs (CI does not install verl: it pins transformers<5.11).
The server manager is thinkgym's hf engine on the tiny policy, or a script where a test needs tool calls."""

import asyncio
import sys
import types
from typing import Any

import gymnasium as gym
import pytest
from pydantic import BaseModel
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.engine import GenerationRequest
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import Episode, Step, episode_rows
from thinkgym.envs import sandbox as sbx
from thinkgym.integrations import verl as tv

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}
LONGCOT = {"task_kwargs": {"n_terms": 3}, "max_thinking_tokens": 24}
DELETHINK = {"max_chunks": 3}


def standin() -> dict[str, types.ModuleType]:
    """verl 0.9.1's agent-loop API as the adapter uses it: the same classes, fields and signatures."""

    class AgentLoopMetrics(BaseModel):
        generate_sequences: float = 0.0
        tool_calls: float = 0.0
        compute_score: float = 0.0
        num_preempted: int = -1

    class AgentLoopOutput(BaseModel):
        prompt_ids: list[int]
        response_ids: list[int]
        response_mask: list[int]
        response_logprobs: list[float] | None = None
        routed_experts: Any | None = None
        multi_modal_data: dict[str, Any] | None = None
        reward_score: float | None = None
        num_turns: int = 0
        metrics: AgentLoopMetrics
        extra_fields: dict[str, Any] = {}
        mm_processor_kwargs: dict[str, Any] | None = None
        mm_processor_output: list[dict[str, Any]] | None = None

    class TokenOutput(BaseModel):
        token_ids: list[int]
        log_probs: list[float] | None = None
        routed_experts: Any | None = None
        stop_reason: str | None = None
        num_preempted: int | None = None
        extra_fields: dict[str, Any] = {}

    class DictConfigWrap:
        def __init__(self, config):
            self.config = config

    class AgentLoopBase:
        def __init__(self, trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, hf_model_type=None, **kwargs):
            self.config = trainer_config.config
            self.rollout_config = self.config.actor_rollout_ref.rollout
            self.server_manager, self.tokenizer, self.processor = server_manager, tokenizer, processor
            self.dataset_cls, self.data_config = dataset_cls, data_config.config

        async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
            raise NotImplementedError

    registry: dict[str, dict] = {}

    def register(agent_name):
        def decorator(subclass):
            registry[agent_name] = {"_target_": f"{subclass.__module__}.{subclass.__qualname__}"}
            return subclass
        return decorator

    loop = types.ModuleType("verl.experimental.agent_loop.agent_loop")
    loop.__dict__.update(AgentLoopMetrics=AgentLoopMetrics, AgentLoopOutput=AgentLoopOutput, DictConfigWrap=DictConfigWrap,
                         AgentLoopBase=AgentLoopBase, register=register, _agent_loop_registry=registry)
    replica = types.ModuleType("verl.workers.rollout.replica")
    replica.TokenOutput = TokenOutput
    return {"verl.experimental.agent_loop.agent_loop": loop, "verl.workers.rollout.replica": replica}


class Api:
    """Builds a loop and token outputs with verl's classes, or the stand-in's."""

    def __init__(self, real: bool, loop_module, token_output):
        self.real, self.module, self.TokenOutput = real, loop_module, token_output

    def config(self, prompt_length: int, response_length: int):
        rollout = {"prompt_length": prompt_length, "response_length": response_length}
        if self.real:
            from omegaconf import OmegaConf

            return OmegaConf.create({"actor_rollout_ref": {"rollout": rollout}})
        return types.SimpleNamespace(actor_rollout_ref=types.SimpleNamespace(rollout=types.SimpleNamespace(**rollout)))

    def loop(self, server, tok, env_id: str, env_kwargs: dict, prompt_length: int = 512, response_length: int = 512):
        wrap = self.module.DictConfigWrap
        args = {"trainer_config": wrap(self.config(prompt_length, response_length)), "server_manager": server, "tokenizer": tok,
                    "processor": None, "dataset_cls": None, "data_config": wrap({})}
        if self.real:  # as verl's AgentLoopWorker does: hydra, from the registry entry plus the config's keys
            import hydra
            from omegaconf import OmegaConf

            args["data_config"] = wrap(OmegaConf.create({}))
            cfg = {**self.module._agent_loop_registry[tv.AGENT_NAME], "env_id": env_id, "env_kwargs": env_kwargs}
            return hydra.utils.instantiate(config=cfg, **args)
        return tv.ThinkgymAgentLoop(**args, env_id=env_id, env_kwargs=env_kwargs)


@pytest.fixture(params=["verl", "stand-in"])
def api(request, monkeypatch):
    tv.agent_loop_class.cache_clear()
    if request.param == "verl":
        module = pytest.importorskip("verl.experimental.agent_loop.agent_loop", reason="verl is not installed here")
        from verl.workers.rollout.replica import TokenOutput

        fake = standin()["verl.experimental.agent_loop.agent_loop"]  # the stand-in must keep verl's fields
        assert set(fake.AgentLoopOutput.model_fields) == set(module.AgentLoopOutput.model_fields)
        assert set(fake.AgentLoopMetrics.model_fields) == set(module.AgentLoopMetrics.model_fields)
        api = Api(True, module, TokenOutput)
    else:
        mods = standin()
        for name in ("verl", "verl.experimental", "verl.experimental.agent_loop", "verl.workers", "verl.workers.rollout"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)
        api = Api(False, mods["verl.experimental.agent_loop.agent_loop"], mods["verl.workers.rollout.replica"].TokenOutput)
    assert tv.ThinkgymAgentLoop.__module__ == "thinkgym.integrations.verl"
    assert api.module._agent_loop_registry["thinkgym"] == {"_target_": "thinkgym.integrations.verl.ThinkgymAgentLoop"}
    yield api
    tv.agent_loop_class.cache_clear()


class PolicyServer:
    """verl's `server_manager.generate`, served by thinkgym's hf engine: the sampled ids (EOS included when
    sampled, as vLLM returns them) and their log-probabilities."""

    def __init__(self, api: Api, policy: Policy):
        self.api, self.engine, self.eos, self.calls = api, HFEngine(policy, seed=0), policy.eos_token_id, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        p = sampling_params
        (c,) = self.engine.generate([GenerationRequest(prompt_ids, p["max_tokens"], p.get("stop", ()), p["temperature"], p["top_p"])])[0]
        ids, logps = c.token_ids + ([self.eos] if c.finish_reason == "eos" else []), c.logprobs + ([c.eos_logprob] if c.finish_reason == "eos" else [])
        self.calls.append((request_id, list(prompt_ids), dict(p), ids, logps))
        return self.api.TokenOutput(token_ids=ids, log_probs=logps, stop_reason="completed")


def run(loop, seed: int, **sample):
    return asyncio.run(loop.run(dict(SAMPLING), extra_info={"seed": seed, "index": 0}, raw_prompt=[], **sample))


def episode_from_calls(calls, eos: int, seed: int) -> Episode:
    steps = []
    for _, prompt, _, ids, logps in calls:
        ended = bool(ids) and ids[-1] == eos
        steps.append(Step(prompt, ids[:-1] if ended else ids, logps[:-1] if ended else logps, "eos" if ended else "length",
                          (eos, logps[-1]) if ended else None))
    return Episode(0, seed, steps)


def test_a_longcot_trajectory_is_one_verl_output(api):
    policy = Policy.tiny(seed=0, device="cpu")
    server = PolicyServer(api, policy)
    out = run(api.loop(server, policy.tokenizer, "LongCoT-v0", LONGCOT), seed=3)
    assert isinstance(out, api.module.AgentLoopOutput)
    env = gym.make("LongCoT-v0", tokenizer=policy.tokenizer, **LONGCOT).unwrapped
    _, info = env.reset(seed=3)
    assert out.prompt_ids == info["prompt_token_ids"] == server.calls[0][1]
    ((rid, _, params, ids, logps),) = server.calls
    assert params == {**SAMPLING, "max_tokens": 24, "logprobs": True}  # the env's budget; verl's sampling otherwise
    assert out.response_ids == ids and out.response_logprobs == logps and out.response_mask == [1] * len(ids)
    (row,) = episode_rows(episode_from_calls(server.calls, policy.eos_token_id, 3), 0)
    assert out.prompt_ids + out.response_ids == row.input_ids
    assert out.reward_score == out.extra_fields["env_info"]["reward_components"]["correctness"]
    assert out.extra_fields | {"env_info": None} == {"trajectory_id": rid, "output_index": 0, "is_last": True, "env_info": None,
                                                     "reward_components": out.extra_fields["reward_components"]}
    assert out.num_turns == 2 and out.metrics.generate_sequences > 0
    if api.real:  # verl's own conversion to its training fields
        fields = out.as_dict()
        assert fields["rm_scores"][-1] == out.reward_score and fields["rollout_log_probs"].tolist() == pytest.approx(logps)


def test_a_delethink_trace_is_one_verl_output_per_chunk_with_its_reward(api):
    policy = Policy.tiny(seed=0, device="cpu")
    server = PolicyServer(api, policy)
    outs = run(api.loop(server, policy.tokenizer, "DelethinkDemo-v0", DELETHINK), seed=0)
    assert isinstance(outs, list) and len(outs) == len(server.calls) == outs[-1].extra_fields["env_info"]["chunks"] > 1
    rows = episode_rows(episode_from_calls(server.calls, policy.eos_token_id, 0), 0)
    assert [o.prompt_ids for o in outs] == [c[1] for c in server.calls] == [r.input_ids[: r.prompt_len] for r in rows]
    assert [o.response_ids for o in outs] == [c[3] for c in server.calls]
    assert [o.response_logprobs for o in outs] == [c[4] for c in server.calls]
    assert len({c[0] for c in server.calls}) == 1  # one request id (verl's sticky session) per trajectory
    assert len({o.reward_score for o in outs}) == 1 and outs[0].reward_score is not None
    assert len({o.extra_fields["trajectory_id"] for o in outs}) == 1
    assert [o.extra_fields["output_index"] for o in outs] == list(range(len(outs)))
    assert [o.extra_fields["is_last"] for o in outs] == [False] * (len(outs) - 1) + [True]
    assert all(isinstance(o, api.module.AgentLoopOutput) and o.num_turns == 2 for o in outs)


class CodeServer:
    """A server that writes one python block, then answers what the interpreter printed."""

    def __init__(self, api: Api, tok):
        self.api, self.tok, self.prompts = api, tok, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        self.prompts.append(list(prompt_ids))
        if "```output" not in self.tok.decode(prompt_ids):
            assert sampling_params["stop"] == ["```\n"]
            ids = self.tok.encode("```python\nprint(6 * 7)\n```\n")
        else:
            ids = self.tok.encode("</think>\\boxed{42}") + [self.tok.eos_token_id]
        return self.api.TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


@pytest.mark.skipif(not sbx.namespaces_available()[0], reason=f"no sandbox here: {sbx.namespaces_available()[1]}")
def test_tool_outputs_are_masked_in_the_one_output_of_a_tool_trajectory(api):
    tok = Policy.tiny(seed=0, device="cpu").tokenizer
    server = CodeServer(api, tok)
    out = run(api.loop(server, tok, "CodeInterpreter-v0", {}), seed=3)
    code, output, answer = tok.encode("```python\nprint(6 * 7)\n```\n"), tok.encode("```output\n42\n```\n"), tok.encode("</think>\\boxed{42}")
    assert out.prompt_ids == server.prompts[0] and server.prompts[1] == out.prompt_ids + code + output
    assert out.response_ids == code + output + answer + [tok.eos_token_id]
    assert out.response_mask == [1] * len(code) + [0] * len(output) + [1] * (len(answer) + 1)
    assert out.response_logprobs == [-0.5] * len(code) + [0.0] * len(output) + [-0.5] * (len(answer) + 1)
    assert out.num_turns == 4 and out.extra_fields["env_info"]["code_calls"] == 1
    assert out.reward_score == (1.0 if out.extra_fields["env_info"]["correct"] else 0.0)


def test_bad_input_is_named(api):
    policy = Policy.tiny(seed=0, device="cpu")
    server = PolicyServer(api, policy)
    with pytest.raises(ValueError, match="needs extra_info.seed"):
        asyncio.run(api.loop(server, policy.tokenizer, "LongCoT-v0", LONGCOT).run(dict(SAMPLING), extra_info={"index": 0}))
    with pytest.raises(ValueError, match="response_length is 8: raise it"):
        run(api.loop(server, policy.tokenizer, "LongCoT-v0", LONGCOT, response_length=8), seed=3)
    # (hydra wraps what the constructor raises in its InstantiationException, with the message)
    with pytest.raises(ValueError if not api.real else Exception, match="'Nope-v0' is not registered"):
        api.loop(server, policy.tokenizer, "Nope-v0", {})
    with pytest.raises(ValueError if not api.real else Exception, match="must not set `tokenizer`"):
        api.loop(server, policy.tokenizer, "LongCoT-v0", {"tokenizer": None})


def test_dataset_rows_pose_each_seed():
    rows = tv.dataset_rows("LongCoT-v0", [7, 8], LONGCOT)
    env = gym.make("LongCoT-v0", **LONGCOT).unwrapped
    env.reset(seed=8)
    assert [r["extra_info"] for r in rows] == [{"seed": 7, "index": 0}, {"seed": 8, "index": 1}]
    assert rows[1]["prompt"] == [{"role": "user", "content": env.problem.prompt}] and rows[1]["agent_name"] == "thinkgym"
    assert tv.sample_seed(rows[0]) == 7
    with pytest.raises(ValueError, match="not registered"):
        tv.dataset_rows("Nope-v0", [0])
