"""The CLI's errors say what to do, in one line, before anything is written: model paths, YAML files, env
settings and mistyped flags; and runs never mix: a fresh run refuses a folder that holds one, and a run given
no folder gets its own, linked from runs/latest."""

import ast
import json
import time
from pathlib import Path

import pytest

from thinkgym.agents.cli import main
from thinkgym.agents.policy import Policy

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--steps", "1", "--prompts-per-step", "1", "--num-generations", "2", "--eval-every", "0",
         "--env-kwargs", json.dumps({"chunk_size": 32, "carryover": 16, "max_chunks": 1})]


def one_line_error(argv: list[str], capsys) -> str:
    """The message of a CLI run that must fail with a one-line error and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code) if exit_.value.code not in (None, 0, 2) else capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code != 0 and "\n" not in message and "Traceback" not in message, message
    return message


def test_a_missing_model_folder_is_reported_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/nope", str(tmp_path / "nope"), "./nope", "nope"):
        t = time.monotonic()
        message = one_line_error(["eval", "--model", name], capsys)
        assert time.monotonic() - t < 5, "no hub retries for a local path"
        assert f"model folder {name!r} does not exist" in message


def test_a_checkpoint_or_run_folder_names_the_subfolder_to_pass(tmp_path, capsys):
    policy = Policy.tiny()
    for step in (3, 12):
        policy.save_pretrained(tmp_path / "run" / f"checkpoint-{step}" / "policy")
    message = one_line_error(["eval", "--model", str(tmp_path / "run" / "checkpoint-3")], capsys)
    assert "is a checkpoint folder" in message and repr(str(tmp_path / "run" / "checkpoint-3" / "policy")) in message
    message = one_line_error(["eval", "--model", str(tmp_path / "run")], capsys)
    assert "is a run folder" in message and repr(str(tmp_path / "run" / "checkpoint-12" / "policy")) in message
    (tmp_path / "empty").mkdir()
    assert "holds no model" in one_line_error(["eval", "--model", str(tmp_path / "empty")], capsys)


def test_yaml_errors_are_one_line(tmp_path, capsys):
    missing = one_line_error(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml: no such file" in missing
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 1\nlearning_rate: [1e-4\nseed: 0\n")
    assert "is not valid YAML at line" in one_line_error(["train", "--config", str(bad)], capsys)
    listed = tmp_path / "list.yaml"
    listed.write_text("- steps: 1\n")
    assert "must be a mapping of GRPOConfig keys" in one_line_error(["train", "--config", str(listed)], capsys)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_an_unknown_env_keyword_names_the_env_and_its_keywords_before_anything_is_written(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    message = one_line_error([command, "--env", "DelethinkDemo-v0", "--env-kwargs", '{"chunk_sise": 64}', "--output-dir", str(out)],
                             capsys)
    assert "DelethinkDemo-v0 takes no keyword argument 'chunk_sise'" in message and "'chunk_size'" in message
    assert "PreTrainedTokenizer" not in message and not out.exists()
    if command == "train":  # with no --output-dir, no time-stamped folder is left behind either
        one_line_error([command, "--env-kwargs", '{"chunk_sise": 64}'], capsys)
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("argv", [["train", "--lr", "1e-4"], ["train", "--learning-rat", "1e-4"], ["sft", "--output-dir", "x", "--learn", "1e-4"],
                                  ["eval", "--temp", "1"]])
def test_flags_are_never_abbreviated(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_every_argparse_parser_refuses_abbreviations():
    """The CLI, the examples and the benchmarks: `--lr` must never silently become `--lr-scheduler`."""
    offenders = []
    sources = [p for folder in ("agents", "envs", "rewards", "integrations", "examples", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    for path in sorted(sources):  # not ROOT.rglob: .venv lives in the checkout
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("ArgumentParser", "add_parser"):
                if not any(k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
                           for k in node.keywords):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_a_fresh_run_refuses_a_folder_that_holds_one(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", *QUICK, "--output-dir", str(out)])
    first = sorted(p.name for p in out.iterdir())
    message = one_line_error(["train", *QUICK, "--output-dir", str(out)], capsys)
    assert "already holds files" in message and "--resume" in message and "--overwrite" in message
    assert sorted(p.name for p in out.iterdir()) == first  # untouched
    events = sorted(out.glob("events.out.tfevents.*"))
    main(["train", *QUICK, "--output-dir", str(out), "--overwrite"])
    assert not any(p.exists() for p in events) and (out / "checkpoint-1").exists()  # the old run is gone, not mixed in
    assert "pass one of them" in one_line_error(["train", *QUICK, "--output-dir", str(out), "--overwrite", "--resume"], capsys)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert "no thinkgym run wrote" in one_line_error(["train", *QUICK, "--output-dir", str(other), "--overwrite"], capsys)
    assert (other / "todo.txt").read_text() == "mine"
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "x").write_text("")
    assert "already holds files" in one_line_error(["sft", "--steps", "1", "--output-dir", str(tmp_path / "sft")], capsys)


def test_runs_without_an_output_folder_get_their_own_linked_from_latest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["train", *QUICK])
    main(["train", *QUICK])
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all((r / "checkpoint-1").exists() for r in runs)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == runs[-1].resolve()
    main(["train", *QUICK[:1], "2", *QUICK[2:], "--resume"])  # continues the latest run to 2 steps
    assert (runs[-1] / "checkpoint-2").exists() and not (runs[0] / "checkpoint-2").exists()
