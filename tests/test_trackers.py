"""`report_to`: TensorBoard by default; W&B and Trackio, when asked for, get the same scalars under the same
names with the step as `train/global_step`; a tracker that is not installed, or unknown, is a one-line error
before anything is written. The trackers here are fake modules in sys.modules: no network, no install."""

import sys
import types

import pytest

from thinkgym.agents.cli import main
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.plot import read_scalars
from thinkgym.agents.trackers import STEP

pytestmark = pytest.mark.usefixtures("one_thread")

ENV_KW = {"chunk_size": 32, "carryover": 16, "max_chunks": 1, "task_kwargs": {"n_terms": 2}}


class FakeRun:
    """What `init` returns: records what the run is sent."""

    def __init__(self, **settings):
        self.settings, self.logged, self.finished = settings, [], False

    def log(self, metrics: dict) -> None:
        self.logged.append(dict(metrics))

    def finish(self) -> None:
        self.finished = True


class FakeWandbRun(FakeRun):
    def __init__(self, **settings):
        super().__init__(**settings)
        self.defined = []

    def define_metric(self, name: str, **kwargs) -> None:
        self.defined.append((name, kwargs))


def fake_tracker(monkeypatch, name: str, run_class: type = FakeRun) -> list[FakeRun]:
    """Install a fake `name` package whose `init` starts a recording run; the runs it started."""
    runs: list[FakeRun] = []
    module = types.ModuleType(name)

    def init(**settings):
        runs.append(run_class(**settings))
        return runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, name, module)
    return runs


def test_grpo_sends_wandb_the_scalars_tensorboard_gets(tmp_path, monkeypatch):
    runs = fake_tracker(monkeypatch, "wandb", FakeWandbRun)
    cfg = GRPOConfig(env="DelethinkDemo-v0", env_kwargs=ENV_KW, steps=2, prompts_per_step=1, num_generations=2, eval_every=0,
                     save_every=0, output_dir=str(tmp_path / "run"), report_to="tensorboard,wandb")
    trainer = GRPOTrainer(cfg)
    trainer.train()
    trainer.writer.close()
    (run,) = runs
    assert run.settings["name"] == "run" and run.settings["config"]["report_to"] == "tensorboard,wandb"
    assert (STEP, {}) in run.defined and ("*", {"step_metric": STEP, "step_sync": True}) in run.defined
    assert [m[STEP] for m in run.logged] == [1, 2] and run.finished  # one call per step
    tensorboard = read_scalars(tmp_path / "run")
    for m in run.logged:
        for tag, value in m.items():
            if tag != STEP:
                assert (m[STEP], pytest.approx(value)) in tensorboard[tag]
    assert {"reward", "loss", "entropy", "learning_rate"} <= set(run.logged[0])


def test_sft_cli_reports_to_trackio_alone(tmp_path, monkeypatch):
    runs = fake_tracker(monkeypatch, "trackio")
    main(["sft", "--env", "DelethinkDemo-v0", "--env-kwargs", '{"task_kwargs": {"n_terms": 2}}', "--seeds", "4", "--steps", "21",
          "--batch-size", "2", "--save-every", "0", "--report-to", "trackio", "--output-dir", str(tmp_path / "sft")])
    (run,) = runs
    assert run.settings["project"] == "thinkgym" and run.settings["config"]["steps"] == 21
    assert [m[STEP] for m in run.logged] == [0, 10, 20] and all("sft/loss" in m for m in run.logged) and run.finished
    assert not list((tmp_path / "sft").glob("events.out.tfevents.*"))  # TensorBoard was not asked for


def test_a_missing_or_unknown_tracker_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when it is not installed
    with pytest.raises(ValueError, match=r"^report_to='wandb' needs the wandb package, which is not installed: pip install wandb$"):
        GRPOConfig(report_to="tensorboard,wandb")
    with pytest.raises(ValueError, match=r"valid: tensorboard, wandb, trackio"):
        GRPOConfig(report_to="mlflow")
    out = tmp_path / "sft"
    with pytest.raises(SystemExit, match=r"^thinkgym sft: error: report_to='wandb' needs the wandb package.*pip install wandb$"):
        main(["sft", "--report-to", "wandb", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match=r"^thinkgym train: error: report_to='wandb' needs the wandb package"):
        main(["train", "--report-to", "wandb", "--output-dir", str(out)])
    assert not out.exists()
