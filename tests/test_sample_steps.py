"""The step-wise export (`thinkgym sample --format steps`): one line per step, which round-trips to the rows
thinkgym's learner trains on (`episode_rows`), through Delethink's resets and CodeInterpreter's tool outputs."""

import json

import pytest
from thinkgym.agents.cli import main
from thinkgym.agents.methods.sample import step_records, step_rows
from thinkgym.agents.policy import Policy
from thinkgym.agents.rollout.collector import Collector
from thinkgym.agents.rollout.engine import Completion
from thinkgym.agents.rollout.hf.engine import HFEngine
from thinkgym.agents.types import episode_rows, step_groups
from thinkgym.envs import sandbox as sbx

pytestmark = pytest.mark.usefixtures("one_thread")

DELETHINK = {"max_chunks": 3}
FIELDS = {"trajectory_id", "env", "seed", "sample", "step", "is_last", "prompt_ids", "response_ids", "logprobs", "env_mask",
          "finish_reason", "reward", "info"}


def through_json(records):
    return [json.loads(json.dumps(r)) for r in records]


def test_delethink_steps_round_trip_to_the_learners_rows():
    policy = Policy.tiny(seed=0, device="cpu")
    batch = Collector("DelethinkDemo-v0", HFEngine(policy, seed=0), DELETHINK, group_size=2).collect([0, 1])
    assert sum(len(step_groups(ep.steps)) > 1 for ep in batch.episodes) >= 2  # contexts were reset
    for i, ep in enumerate(batch.episodes):
        recs = through_json(step_records(ep, i % 2, "DelethinkDemo-v0"))
        assert all(set(r) == FIELDS for r in recs)
        assert [r["step"] for r in recs] == list(range(len(ep.steps)))
        assert [r["is_last"] for r in recs] == [False] * (len(recs) - 1) + [True]
        assert [r["reward"] for r in recs[:-1]] == [None] * (len(recs) - 1) and recs[-1]["reward"] == ep.reward
        assert recs[-1]["info"]["chunks"] == len(ep.steps) and all(r["info"] is None for r in recs[:-1])
        assert len({r["trajectory_id"] for r in recs}) == 1
        for r, st in zip(recs, ep.steps):
            assert r["prompt_ids"] == st.prompt_ids and r["env_mask"] == [1] * len(r["response_ids"])
            assert len(r["logprobs"]) == len(r["response_ids"])
        assert step_rows(recs, i) == episode_rows(ep, i) == [r for r in batch.rows if r.episode == i]


class CodeScript:
    """An engine that writes one python block, then answers what the interpreter printed (its log-probs made up)."""

    def __init__(self, tok):
        self.policy = type("P", (), {"tokenizer": tok, "eos_token_id": tok.eos_token_id})()

    def generate(self, requests):
        out = []
        for r in requests:
            tok = self.policy.tokenizer
            text = tok.decode(r.prompt_ids)
            if "```output" not in text:
                ids = tok.encode("Let me run it.\n```python\nprint(6 * 7)\n```\n")
                out.append([Completion(ids, tok.decode(ids), [-0.5] * len(ids), "stop")])
            else:
                ids = tok.encode("</think>\\boxed{42}")
                out.append([Completion(ids, tok.decode(ids), [-0.25] * len(ids), "eos", -0.125)])
        return out


@pytest.mark.skipif(not sbx.namespaces_available()[0], reason=f"no sandbox here: {sbx.namespaces_available()[1]}")
def test_tool_outputs_are_appended_to_their_step_masked_and_round_trip():
    tok = Policy.tiny(seed=0, device="cpu").tokenizer
    batch = Collector("CodeInterpreter-v0", CodeScript(tok), group_size=1).collect([3])
    (ep,) = batch.episodes
    first, last = through_json(step_records(ep, 0, "CodeInterpreter-v0"))
    code, output = tok.encode("Let me run it.\n```python\nprint(6 * 7)\n```\n"), tok.encode("```output\n42\n```\n")
    assert first["response_ids"] == code + output
    assert first["env_mask"] == [1] * len(code) + [0] * len(output)
    assert first["logprobs"] == [-0.5] * len(code) + [0.0] * len(output)
    assert last["prompt_ids"] == first["prompt_ids"] + first["response_ids"]
    assert last["response_ids"][-1] == tok.eos_token_id and last["logprobs"][-1] == -0.125 and last["env_mask"] == [1] * len(last["env_mask"])
    assert last["info"]["env_token_spans"] == [[len(first["prompt_ids"]) + len(code), len(last["prompt_ids"])]]
    assert step_rows([first, last], 0) == episode_rows(ep, 0) == batch.rows and len(batch.rows) == 1


def test_cli_writes_steps_resumes_and_keeps_formats_apart(tmp_path, capsys):
    out = tmp_path / "steps.jsonl"
    args = ["sample", "--env", "DelethinkDemo-v0", "--env-kwargs", json.dumps(DELETHINK), "--n", "2", "--seed-start", "0",
            "--out", str(out), "--format", "steps", "--device", "cpu"]
    main([*args, "--seeds", "2"])
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(set(r) == FIELDS for r in recs)
    ends = [r for r in recs if r["is_last"]]
    assert sorted((r["seed"], r["sample"]) for r in ends) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # cut off in the middle of seed 1's trajectories: resuming samples seed 1 again, and seed 2
    keep = next(k for k, r in enumerate(recs) if r["seed"] == 1) + 1
    out.write_text("".join(json.dumps(r) + "\n" for r in recs[:keep]))
    capsys.readouterr()
    main([*args, "--seeds", "3"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["skipped_seeds"], res["new_traces"]) == (1, 4)
    ends = [json.loads(x) for x in out.read_text().splitlines() if json.loads(x)["is_last"]]
    assert sorted((r["seed"], r["sample"]) for r in ends) == [(s, k) for s in range(3) for k in range(2)]
    with pytest.raises(SystemExit, match="holds steps lines"):
        main([*args[:-2], "--format", "episodes", "--seeds", "3"])
    with pytest.raises(SystemExit) as bad:
        main([*args[:-2], "--format", "turns", "--seeds", "1"])
    assert bad.value.code == 2 and "invalid choice: 'turns'" in capsys.readouterr().err
