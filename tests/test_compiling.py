"""The engine's compiled functions fall back to eager code, once and with a warning, where compiling fails."""

import warnings

import pytest
import torch
from torch._dynamo.exc import TorchDynamoException

from thinkgym.agents.rollout.hf import compiling


def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch):
    attempts = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            attempts.append(args)
            raise TorchDynamoException("Cannot find a working triton installation")
        return run

    monkeypatch.setattr(compiling.torch, "compile", broken_compile)
    double = compiling.compiled(lambda x: 2 * x)
    with pytest.warns(UserWarning, match="triton"):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    assert len(attempts) == 1


def test_hitting_the_recompile_limit_falls_back_to_eager(monkeypatch):
    """Seen on an H200: the 9th variant of a compiled piece raised FailOnRecompileLimitHit under fullgraph."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    def limited_compile(fn, **kwargs):
        def run(*args):
            raise FailOnRecompileLimitHit("Hard failure due to fullgraph=True")
        return run

    monkeypatch.setattr(compiling.torch, "compile", limited_compile)
    with pytest.warns(UserWarning, match="recompile|fullgraph"):
        assert torch.equal(compiling.compiled(lambda x: x + 1)(torch.zeros(2)), torch.ones(2))


def test_every_fused_step_shares_one_compiled_copy_of_each_piece():
    from thinkgym.agents.policy import Policy
    from thinkgym.agents.rollout.hf.fused_step import PIECES, FusedStep

    steps = [FusedStep(Policy.tiny(seed=s).model, compile=True) for s in range(3)]
    assert all((f.before, f.after, f.logits) == tuple(PIECES.values()) for f in steps)


def test_errors_of_the_function_itself_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(compiling.torch, "compile", lambda fn, **kwargs: fn)
    bad = compiling.compiled(lambda x: x @ x)
    with pytest.raises(RuntimeError):
        bad(torch.ones(2, 3))
