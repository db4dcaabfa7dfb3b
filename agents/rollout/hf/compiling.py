"""`torch.compile` for the engine's hot functions, with an eager fallback where no compiler works."""

from __future__ import annotations

import warnings
from typing import Callable

import torch


def compiled(fn: Callable) -> Callable:
    """`fn` compiled with dynamic shapes (so batch sizes and model sizes share one graph), falling back
    to `fn` itself, with a warning, if compiling fails (for example where Triton is missing).

    It compiles on the first call, so importing a module that uses it does not load the compiler. Wrap a
    function once per process: dynamo's recompile limit counts every compiled variant of a function,
    and each new wrapper of the same function compiles its variants again."""
    current = None

    def call(*args):
        nonlocal current
        if current is None:
            # the fused pieces have up to 8 legitimate variants each (first layer or not, one row or many,
            # decode or prefill: dynamo specialises sizes of 1), which dynamo's default limit of 8 just fits
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            current = torch.compile(fn, dynamic=True, fullgraph=True)
        try:
            return current(*args)
        except Exception as e:
            from torch._dynamo.exc import FailOnRecompileLimitHit, TorchDynamoException
            if current is fn or not isinstance(e, (TorchDynamoException, FailOnRecompileLimitHit)):
                raise
            warnings.warn(f"compiling {fn.__name__} failed ({type(e).__name__}: {e}); running it eagerly", stacklevel=2)
            current = fn
            return fn(*args)

    return call
