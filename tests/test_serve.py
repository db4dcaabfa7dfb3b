"""`thinkgym serve` (openenv-core's server) and thinkgym/Remote-v0 (its client): every env id served on
127.0.0.1 steps exactly as in process, token-exactly, through OpenEnv's own client and through the gym env;
bad requests are protocol errors, a disconnect frees its session, a stopped server is a clear client error."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("openenv.core")

import thinkgym  # noqa: E402
from thinkgym.agents.learner.sft import demonstration_episode  # noqa: E402
from thinkgym.envs import TokenAction  # noqa: E402
from thinkgym.envs.registration import make_env  # noqa: E402
from thinkgym.envs.sandbox import namespaces_available  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
DEMO_KW = {"chunk_size": 32, "carryover": 16, "head": 4, "max_chunks": 3, "task_kwargs": {"n_terms": 6}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(env_id: str, env_kwargs: dict | None = None, **kwargs):
    """A server for `env_id` on 127.0.0.1 (a free port), in a thread of this process; yields its URL."""
    import uvicorn

    from thinkgym.envs.server import build_app, quiet_disconnects

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(quiet_disconnects(build_app(env_id, env_kwargs, **kwargs)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def openenv_client(url: str):
    """OpenEnv's own client, with no thinkgym code: plain dicts on the wire."""
    from openenv.core import GenericEnvClient

    return GenericEnvClient(base_url=url).sync()


def random_actions(env: gym.Env, seed: int, n: int = 8) -> list[TokenAction]:
    """Random sampled ids, some filling the step's budget (a chunk boundary), some ending with EOS."""
    rng, tok = np.random.default_rng(seed), env.unwrapped.tokenizer
    out = []
    for i in range(n):
        ids = rng.integers(0, len(tok), size=int(rng.integers(1, 200))).tolist()
        out.append(TokenAction.from_ids(tok, ids, eos=bool(i == n - 1 or rng.random() < 0.2)))
    return out


def play(step, reset_out, actions) -> list[tuple]:
    """(observation, reward, terminated, truncated, info) of each step until the episode ends, after the reset's."""
    rows, k = [reset_out], 0
    done = False
    while not done:
        action = actions[k]
        k += 1
        out = step(action)
        rows.append(out)
        done = out[2] or out[3]
    return rows


def in_process_rows(env_id: str, seed: int, actions, env_kwargs: dict | None = None) -> list[tuple]:
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        return play(env.step, (*env.reset(seed=seed),), actions)
    finally:
        env.close()


MEASURED = {"code_time_s"}  # wall-clock seconds the sandbox took: never the same twice, in process or not


def comparable(rows: list[tuple]) -> list[tuple]:
    """Rows as JSON carries them (a tuple, such as an env_token_spans pair, arrives as a list), measured times left out."""
    return [(*r[:-1], json.loads(json.dumps({k: v for k, v in r[-1].items() if k not in MEASURED}))) for r in rows]


def wire_action(a) -> dict:
    return {"text": str(a), "token_ids": list(a.token_ids), "eos": a.eos} if isinstance(a, TokenAction) else {"text": a}


@pytest.mark.parametrize("env_id", thinkgym.ENV_IDS)
def test_every_env_id_through_openenv_client_matches_in_process(env_id):
    if env_id == "CodeInterpreter-v0" and not namespaces_available()[0]:
        pytest.skip(f"no sandbox here: {namespaces_available()[1]}")
    local = make_env(env_id)
    demo = [TokenAction.from_ids(local.unwrapped.tokenizer, s.action_ids, s.finish_reason == "eos")
            for s in demonstration_episode(local, 11).steps]
    local.close()
    scripts = {11: demo, 12: random_actions(local, 12), 13: ["no answer here", "\\boxed{7}"] * 4}
    rewards = []
    with served(env_id) as url:
        with openenv_client(url) as client:
            for seed, actions in scripts.items():
                expected = in_process_rows(env_id, seed, actions)
                first = client.reset(seed=seed)
                got = [(first.observation["text"], first.observation["info"])]
                for k in range(len(expected) - 1):
                    r = client.step(wire_action(actions[k]))
                    o = r.observation
                    got.append((o["text"], r.reward, o["terminated"], o["truncated"], o["info"]))
                    assert r.done == (o["terminated"] or o["truncated"])
                assert comparable(got) == comparable(expected), f"{env_id} seed {seed}: served episode differs from in process"
                state = client.state()
                assert state["env_id"] == env_id and state["seed"] == seed and state["step_count"] == len(expected) - 1
                assert [a["token_ids"] for a in state["actions"]] == [wire_action(a).get("token_ids") for a in actions[:len(expected) - 1]]
                rewards.append(got[-1][1])
    assert rewards[0] > rewards[2] or rewards[0] == 1.0, f"the demonstration should score: {rewards}"


def test_remote_gym_env_is_token_exact_and_replays():
    """thinkgym/Remote-v0 with TokenActions: each step's rows (prompt ids, budget, stops, the chunk's kept
    context) are the in-process env's, and replaying the served episode's actions in process gives them again."""
    with served("DelethinkDemo-v0", DEMO_KW) as url:
        env = gym.make("thinkgym/Remote-v0", url=url, env_id="DelethinkDemo-v0")
        assert env.unwrapped.max_thinking_tokens == 32 + 2 * 16
        for seed in (0, 1, 2):
            actions = random_actions(env, 100 + seed, n=6)
            rows = play(env.step, env.reset(seed=seed), actions)
            assert any("chunk" in r[-1] for r in rows[1:]), "no chunk boundary crossed"
            assert all(r[-1]["prompt_token_ids"] or r[2] or r[3] for r in rows[1:])
            sent = env.unwrapped.state().actions
            replay = [TokenAction(a["text"], a["token_ids"], a["eos"]) for a in sent]
            assert rows == in_process_rows("DelethinkDemo-v0", seed, replay, DEMO_KW)
        env.close()


def test_a_malformed_action_never_raises_remotely():
    with served("DelethinkDemo-v0") as url:
        env = gym.make("thinkgym/Remote-v0", url=url)
        env.reset(seed=0)
        served_step = env.step(12345)  # not text: malformed, as in process
        env.close()
    local = make_env("DelethinkDemo-v0")
    local.reset(seed=0)
    assert served_step == local.step(12345) and served_step[-1]["format_error"] is True


def test_bad_requests_are_protocol_errors_and_the_session_lives_on():
    from websockets.sync.client import connect

    with served("DelethinkDemo-v0") as url, connect(url.replace("http", "ws") + "/ws") as ws:
        def ask(message) -> dict:
            ws.send(message if isinstance(message, str) else json.dumps(message))
            return json.loads(ws.recv(timeout=30))

        cases = [("{not json", "INVALID_JSON"), ({"type": "warp"}, "UNKNOWN_TYPE"),
                 ({"type": "step", "data": {"text": 3}}, "VALIDATION_ERROR"),
                 ({"type": "step", "data": {"text": "x", "bogus": 1}}, "VALIDATION_ERROR"),
                 ({"type": "step", "data": {"text": "x", "token_ids": ["1"]}}, "VALIDATION_ERROR"),
                 ({"type": "step", "data": {"text": "x"}}, "EXECUTION_ERROR"),  # before any reset
                 ({"type": "reset", "data": {"seed": -1}}, "EXECUTION_ERROR"),
                 ({"type": "reset", "data": {"sed": 1}}, "EXECUTION_ERROR")]
        for message, code in cases:
            reply = ask(message)
            assert reply["type"] == "error" and reply["data"]["code"] == code, (message, reply)
        assert "seed must be an integer >= 0" in ask({"type": "reset", "data": {"seed": -1}})["data"]["message"]
        assert "accepted: ['seed', 'options', 'episode_id']" in ask({"type": "reset", "data": {"sed": 1}})["data"]["message"]
        reply = ask({"type": "reset", "data": {"seed": 3}})
        assert reply["type"] == "observation" and reply["data"]["observation"]["info"]["max_new_tokens"] == 64


def test_a_disconnect_frees_its_session():
    from websockets.sync.client import connect

    with served("DelethinkDemo-v0", max_sessions=2) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        a, b = connect(ws_url), connect(ws_url)
        for ws in (a, b):
            ws.send(json.dumps({"type": "reset", "data": {"seed": 1}}))
            assert json.loads(ws.recv(timeout=30))["type"] == "observation"
        with connect(ws_url) as c:  # a third: the server is full
            assert json.loads(c.recv(timeout=30))["data"]["code"] == "CAPACITY_REACHED"
        a.socket.close()  # mid-episode, without a close message
        b.close()
        deadline = time.monotonic() + 30
        while True:
            with connect(ws_url) as c:
                c.send(json.dumps({"type": "reset", "data": {"seed": 1}}))
                if json.loads(c.recv(timeout=30))["type"] == "observation":
                    break
            assert time.monotonic() < deadline, "the disconnected sessions were never freed"
            time.sleep(0.1)


def test_remote_env_checks_what_it_connects_to():
    with served("DelethinkDemo-v0") as url:
        with pytest.raises(ValueError, match="serves DelethinkDemo-v0, not env_id='LongCoT-v0'"):
            gym.make("thinkgym/Remote-v0", url=url, env_id="LongCoT-v0")
        from transformers import PreTrainedTokenizerFast
        from thinkgym.envs.tokenizer import builtin_tokenizer

        other = PreTrainedTokenizerFast(tokenizer_object=builtin_tokenizer().backend_tokenizer, eos_token="<|endoftext|>")
        other.name_or_path = "another"
        with pytest.raises(ValueError, match="is not the served env's"):
            gym.make("thinkgym/Remote-v0", url=url, tokenizer=other)
    with pytest.raises(ValueError, match="url must be the server's address"):
        gym.make("thinkgym/Remote-v0", url="127.0.0.1:1")
    with pytest.raises(ConnectionError, match="is not answering"):
        gym.make("thinkgym/Remote-v0", url=f"http://127.0.0.1:{free_port()}")


def start_cli_server(port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "thinkgym.agents.cli", "serve", "--env", "DelethinkDemo-v0", "--port", str(port), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None, f"thinkgym serve exited: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "thinkgym serve did not start"
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_restarted_server_is_a_clear_error_and_state_resumes_the_episode():
    port = free_port()
    proc = start_cli_server(port)
    try:
        env = gym.make("thinkgym/Remote-v0", url=f"http://127.0.0.1:{port}")
        actions = [TokenAction.from_ids(env.unwrapped.tokenizer, [49] * 64, eos=False)] * 2 + \
                  [TokenAction.from_ids(env.unwrapped.tokenizer, [50] * 10, eos=True)]
        env.reset(seed=5)
        env.step(actions[0])
        saved = env.unwrapped.state()
        stop(proc)
        with pytest.raises(ConnectionError, match="stopped or restarted"):
            env.step(actions[1])
        proc = start_cli_server(port)
        obs, info = env.unwrapped.resume(saved)
        rest = [env.step(a) for a in actions[1:]]
        expected = in_process_rows("DelethinkDemo-v0", 5, actions)
        assert (obs, info) == expected[1][::4] and rest == expected[2:]
        env.close()
    finally:
        stop(proc)


@pytest.mark.skipif(not namespaces_available()[0], reason=f"no sandbox here: {namespaces_available()[1]}")
def test_served_code_runs_in_the_sandbox():
    """Code sent to a served CodeInterpreter-v0 meets the sandbox as in process: no network, no files of the
    server's, no process outside it; the server process itself is untouched."""
    marker = Path(f"/tmp/thinkgym-serve-{os.getpid()}")
    with served("CodeInterpreter-v0") as url:
        port = int(url.rsplit(":", 1)[1])  # listening on the host, so only the sandbox's own network refuses it
        code = ("```python\nimport os, socket\nfor f in (lambda: open('/etc/hostname').read(), "
                f"lambda: socket.create_connection(('127.0.0.1', {port})), lambda: open({str(marker)!r}, 'w').write('x'), "
                f"lambda: os.kill({os.getpid()}, 9)):\n"
                "    try:\n        f(); print('ran')\n    except Exception as e:\n        print('refused', type(e).__name__)\n```\n")
        env = gym.make("thinkgym/Remote-v0", url=url)
        env.reset(seed=0)
        obs = env.step(code)[0]
        env.close()
    output = obs.split("```output")[1].split("```")[0].split()
    assert output == ["refused", "FileNotFoundError", "refused", "ConnectionRefusedError", "ran", "refused", "ProcessLookupError"], obs
    assert not marker.exists(), "the sandbox's /tmp is its own: the server's is untouched"
    local = make_env("CodeInterpreter-v0")
    local.reset(seed=0)
    assert local.step(code)[0] == obs
    local.close()


def test_train_on_a_served_env_gives_the_in_process_first_step(tmp_path, monkeypatch):
    """`thinkgym train` on DelethinkDemo-v0 served (thinkgym/Remote-v0) collects the same first step, rows and
    rewards, as in process, for the same seed."""
    from thinkgym.agents import cli
    from thinkgym.agents.rollout.collector import Collector

    batches: list = []
    collect = Collector.collect
    monkeypatch.setattr(Collector, "collect", lambda self, *a, **k: batches.append(collect(self, *a, **k)) or batches[-1])
    flags = ["--steps", "1", "--prompts-per-step", "2", "--num-generations", "2", "--eval-every", "0", "--seed", "3", "--save-every", "0"]
    cli.main(["train", *flags, "--env", "DelethinkDemo-v0", "--env-kwargs", json.dumps(DEMO_KW), "--output-dir", str(tmp_path / "local")])
    with served("DelethinkDemo-v0", DEMO_KW) as url:
        cli.main(["train", *flags, "--env", "thinkgym/Remote-v0", "--env-kwargs", json.dumps({"url": url}),
                  "--output-dir", str(tmp_path / "remote")])
    local, remote = batches
    assert [vars(r) for r in remote.rows] == [vars(r) for r in local.rows] and len(local.rows) >= 4
    assert [(e.reward, e.info, e.budget) for e in remote.episodes] == [(e.reward, e.info, e.budget) for e in local.episodes]


def test_token_level_wrapper_runs_a_served_env_as_in_process():
    """SB3's view (`TokenLevelWrapper`: one token per step) of a served env is the in-process env's."""
    from thinkgym.envs.token_level import TokenLevelWrapper

    rng = np.random.default_rng(0)
    with served("DelethinkDemo-v0", DEMO_KW) as url:
        wrapped = [TokenLevelWrapper(gym.make("thinkgym/Remote-v0", url=url), vocab=list("0123456789+=|") + ["\\boxed{"], window=16),
                   TokenLevelWrapper(make_env("DelethinkDemo-v0", **DEMO_KW), vocab=list("0123456789+=|") + ["\\boxed{"], window=16)]
        runs = [[], []]
        actions = rng.integers(0, wrapped[0].action_space.n, size=300).tolist()
        for env, run in zip(wrapped, runs):
            obs, _ = env.reset(seed=4)
            run.append(obs.tolist())
            for a in actions:
                obs, reward, term, trunc, _ = env.step(a)
                run.append((obs.tolist(), reward, term, trunc))
                if term or trunc:
                    run.append(env.reset(seed=5)[0].tolist())
            env.close()
    assert runs[0] == runs[1] and sum(1 for r in runs[0] if isinstance(r, tuple) and (r[2] or r[3])) >= 1


@pytest.mark.slow
def test_trl_grpo_trainer_rolls_out_through_a_served_env(tmp_path, monkeypatch, restores_process_state):
    """TRL's GRPOTrainer with EnvRollout on thinkgym/Remote-v0 gets the rows it gets in process (same seed)."""
    pytest.importorskip("trl")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from thinkgym.agents.policy import Policy
    from thinkgym.integrations.trl import EnvRollout, thinkgym_reward

    longcot = {"task_kwargs": {"n_terms": 3}, "max_thinking_tokens": 24, "stop": list("aeiou")}
    outputs = []

    def run(env_id: str, kwargs: dict, out: str) -> None:
        policy = Policy.tiny(seed=0, device="cpu")
        rollout = EnvRollout(env_id, policy.tokenizer, kwargs)
        record = lambda prompts, trainer: outputs.append(rollout(prompts, trainer)) or outputs[-1]  # noqa: E731
        args = GRPOConfig(output_dir=str(tmp_path / out), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                          use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, beta=0.0, seed=0)
        GRPOTrainer(model=policy.model, reward_funcs=thinkgym_reward, args=args, train_dataset=rollout.dataset(range(8)),
                    processing_class=policy.tokenizer, rollout_func=record).train()

    run("LongCoT-v0", longcot, "local")
    with served("LongCoT-v0", longcot) as url:
        run("thinkgym/Remote-v0", {"url": url}, "remote")
    local, remote = outputs
    assert remote == local and len(local["prompt_ids"]) == 4


def test_serve_refuses_a_bad_setting_in_one_line(capsys):
    from thinkgym.agents.cli import main

    for argv, message in ((["--env", "Nope-v0"], "'Nope-v0' is not a thinkgym env id; accepted: ['Delethink-v0'"),
                          (["--env-kwargs", '{"chunk": 3}'], "takes no keyword argument 'chunk'"),
                          (["--max-sessions", "0"], "max_sessions must be an integer >= 1"),
                          (["--port", "70000"], "--port must be in 0..65535")):
        with pytest.raises(SystemExit) as exc:
            main(["serve", *argv])
        assert str(exc.value).startswith("thinkgym serve: error: ") and message in str(exc.value), exc.value


@pytest.mark.slow
def test_the_load_benchmark_runs_in_a_tiny_mode():
    """benchmarks/serve_load.py for 3 s with a few sessions: every episode checked, none lost or crossed."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--seconds", "3", "--delethink", "3",
                          "--code", "1" if namespaces_available()[0] else "0"], cwd=ROOT, capture_output=True, text=True, timeout=400,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs and all(r["episodes"] > 0 and r["crossed"] == 0 and r["lost"] == 0 and r["p99_ms"] > 0 for r in runs), runs
    assert "| DelethinkDemo-v0 | 3 |" in out.stdout
