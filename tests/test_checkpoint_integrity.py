"""Checkpoints carry a manifest (each file's size and sha256, written last); resuming verifies it and skips,
with a warning naming it and why, a damaged or unfinished checkpoint or a damaged `latest`, and resumes from
the previous complete one exactly as a run that stopped there. Saves clear what killed saves left."""

import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from thinkgym.agents.learner import checkpoint as ckpt
from thinkgym.agents.learner.checkpoint import latest_checkpoint, save_checkpoint
from thinkgym.agents.learner.config import GRPOConfig
from thinkgym.agents.learner.trainer import GRPOTrainer
from thinkgym.agents.policy import Policy
from thinkgym.rewards import register_reward

pytestmark = pytest.mark.usefixtures("one_thread")
MANIFEST = "manifest.json"


@register_reward("sevens_written")
def sevens_written(sample, **_):
    """A reward with variance for an untrained policy, so that every step moves the weights."""
    return float(sample.text.count("7"))


def cfg(out: Path, **kw) -> GRPOConfig:
    base = dict(env="DelethinkDemo-v0", env_kwargs={"max_chunks": 2}, model="tiny", output_dir=str(out), steps=2,
                prompts_per_step=1, num_generations=2, micro_batch_size=4, learning_rate=1e-3, eval_every=0, save_every=1,
                log_completions_every=0, reward="sevens_written")
    return GRPOConfig(**{**base, **kw})


def resume(out: Path, steps: int = 3) -> tuple[GRPOTrainer, list[str]]:
    trainer = GRPOTrainer(cfg(out, steps=steps, resume=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run that saved checkpoints 0, 1 and 2, and the weights of the run that stopped at checkpoint-1 and
    was resumed to step 3."""
    root = tmp_path_factory.mktemp("ckpt")
    GRPOTrainer(cfg(root / "base")).train()
    shutil.copytree(root / "base", root / "ref")
    shutil.rmtree(root / "ref" / "checkpoint-2")
    (root / "ref" / "latest").write_text("checkpoint-1")
    ref, _ = resume(root / "ref")
    weights = {k: v.clone() for k, v in ref.model.state_dict().items()}
    stopped_at_2 = Policy.from_pretrained(str(root / "base" / "checkpoint-2" / "policy")).model.state_dict()
    assert any(not torch.equal(stopped_at_2[k], v) for k, v in weights.items())  # the steps moved the weights
    return root, weights


def tensor_data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 header length, header, data


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "garble_header":
        data[:16] = b"\xff" * 16
    elif how == "flip_data":  # 64 bytes inside the tensor data (past a safetensors header), the header intact
        start = tensor_data_offset(path) if path.suffix == ".safetensors" else 0
        mid = start + (len(data) - start) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))


def checkpoint_files(run: Path, name: str = "checkpoint-2") -> list[str]:
    return sorted(p.relative_to(run / name).as_posix() for p in (run / name).rglob("*") if p.is_file() and p.name != MANIFEST)


def test_every_checkpoint_has_a_manifest_of_every_file(runs):
    root, _ = runs
    for name in ("checkpoint-0", "checkpoint-1", "checkpoint-2"):
        assert ckpt.checkpoint_problem(root / "base" / name) is None
        assert "policy/model.safetensors" in checkpoint_files(root / "base", name)


@pytest.mark.parametrize("how", ["truncate", "empty", "garble_header", "flip_data"])
def test_each_damaged_file_of_the_newest_checkpoint_is_skipped_naming_it(runs, tmp_path, how):
    """A truncated, empty or header-garbled model.safetensors or trainer_state.pt stopped the run with a
    traceback naming no checkpoint; 64 flipped bytes of tensor data resumed silently with wrong weights."""
    root, _ = runs
    for rel in checkpoint_files(root / "base"):
        run = tmp_path / f"{how}-{rel.replace('/', '_')}"
        shutil.copytree(root / "base", run)
        damage(run / "checkpoint-2" / rel, how)
        with pytest.warns(UserWarning) as caught:
            assert latest_checkpoint(run) == run / "checkpoint-1", rel
        messages = " | ".join(str(w.message) for w in caught)
        assert f"skipping checkpoint {run / 'checkpoint-2'}: {rel} " in messages, messages
        assert "latest names checkpoint-2, which was skipped; resuming from the newest complete one, checkpoint-1" in messages


@pytest.mark.parametrize("how, reason", [("missing", "it has no manifest.json (its save did not finish)"),
                                         ("garble", "its manifest.json is unreadable (UnicodeDecodeError")])
def test_a_missing_or_unreadable_manifest_is_an_unfinished_checkpoint(runs, tmp_path, how, reason):
    """A kill between the trainer state and the manifest leaves no manifest."""
    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "base", run)
    manifest = run / "checkpoint-2" / MANIFEST
    manifest.unlink() if how == "missing" else damage(manifest, "garble_header")
    with pytest.warns(UserWarning, match=re.escape(f"skipping checkpoint {run / 'checkpoint-2'}: {reason}")):
        assert latest_checkpoint(run) == run / "checkpoint-1"


@pytest.mark.parametrize("rel, how", [("policy/model.safetensors", "flip_data"), ("trainer_state.pt", "truncate")])
def test_a_damaged_newest_checkpoint_resumes_exactly_as_a_run_stopped_at_the_previous(runs, tmp_path, rel, how):
    root, reference = runs
    run = tmp_path / "run"
    shutil.copytree(root / "base", run)
    damage(run / "checkpoint-2" / rel, how)
    trainer, messages = resume(run)
    assert trainer.step == 3
    assert any(m.startswith(f"skipping checkpoint {run / 'checkpoint-2'}: ") for m in messages), messages
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    assert ckpt.checkpoint_problem(run / "checkpoint-2") is None  # rewritten by the resumed run


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe", "is not UTF-8 text"), ("dir", "is a directory, not a file naming a checkpoint"),
    ("abs", "not a checkpoint-<step> folder of this run"), (b"../other/checkpoint-2", "not a checkpoint-<step> folder of this run"),
    (b"", "names '', not a checkpoint-<step> folder"),
])
def test_a_damaged_latest_falls_back_naming_it(runs, tmp_path, content, reason):
    """Bytes \\xff\\xfe stopped the run with a decode error naming nothing, a directory raised IsADirectoryError,
    and another run's absolute path was followed silently."""
    root, _ = runs
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(root / "base", run)
    shutil.rmtree(run / "checkpoint-2")
    shutil.copytree(root / "base", other)
    pointer = run / "latest"
    if content == "dir":
        pointer.unlink()
        pointer.mkdir()
    elif content == "abs":
        pointer.write_text(str(other / "checkpoint-2"))
    else:
        pointer.write_bytes(content)
    with pytest.warns(UserWarning, match=f"{pointer} .*{reason}.*; resuming from the newest complete one, checkpoint-1"):
        assert latest_checkpoint(run) == run / "checkpoint-1"


class FakePolicy:
    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")


def test_saves_clear_what_killed_saves_and_deletes_left(tmp_path, monkeypatch):
    for step in (0, 1, 2):
        save_checkpoint(tmp_path, step, FakePolicy(), {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-1", "checkpoint-2", "latest"]
    real_rmtree = shutil.rmtree

    def killed(path, *a, **kw):  # a kill inside retention's delete, after its first file
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, FakePolicy(), {"step": 3}, keep=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"  # the half-deleted one is no candidate
    (tmp_path / "latest.tmp").write_text("checkpoint-9")  # a kill inside the pointer's write
    (tmp_path / "checkpoint-3" / "trainer_state.pt.tmp").write_bytes(b"half")
    (tmp_path / "checkpoint-7" / "policy").mkdir(parents=True)  # an empty folder an older version's rmtree left
    save_checkpoint(tmp_path, 4, FakePolicy(), {"step": 4}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-3", "checkpoint-4", "latest"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_checkpoints_saved_before_manifests_still_resume(tmp_path):
    for step in (0, 1):
        save_checkpoint(tmp_path, step, FakePolicy(), {"step": step})
        (tmp_path / f"checkpoint-{step}" / MANIFEST).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path).name == "checkpoint-1"
