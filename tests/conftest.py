import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clear skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: they run as fast on one, and leave the second
    core to other work. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def internal(key: str) -> bool:
    """Variables that are not a test's doing: pytest's own (per phase), and the marker torch's inductor
    sets once per process when it first compiles (vLLM compiles)."""
    return key == "PYTEST_CURRENT_TEST" or key.startswith("_TORCHINDUCTOR_")


class ProcessState:
    """The process-wide settings a test can leave behind for the tests after it: environment variables,
    the working directory and torch's global settings. A process group is left alone: vLLM's in-process
    engine binds its global state to the one it starts, and a later engine in the same process reuses it."""

    def __init__(self) -> None:
        import torch

        self.env = {k: v for k, v in os.environ.items() if not internal(k)}
        self.cwd = os.getcwd()
        self.torch = {"default dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
                      "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
                      "grad mode": torch.is_grad_enabled(), "float32 matmul precision": torch.get_float32_matmul_precision()}

    def changes_since(self, before: "ProcessState") -> list[str]:
        keys = sorted(k for k in self.env.keys() | before.env.keys() if self.env.get(k) != before.env.get(k))
        changes = [f"environment variables {keys}"] if keys else []
        changes += ["the working directory"] if self.cwd != before.cwd else []
        changes += [f"torch's {k} ({before.torch[k]} -> {v})" for k, v in self.torch.items() if v != before.torch[k]]
        return changes

    def restore(self) -> None:
        import torch

        for key in set(os.environ) - set(self.env):
            if not internal(key):
                del os.environ[key]
        os.environ.update(self.env)
        os.chdir(self.cwd)
        torch.set_default_dtype(self.torch["default dtype"])
        torch.set_num_threads(self.torch["threads"])
        torch.use_deterministic_algorithms(self.torch["deterministic algorithms"])
        torch.set_grad_enabled(self.torch["grad mode"])
        torch.set_float32_matmul_precision(self.torch["float32 matmul precision"])


@pytest.fixture(scope="session", autouse=True)
def vllm_imported_up_front():
    """vLLM sets environment variables when first imported (TORCHINDUCTOR_COMPILE_THREADS, TRITON_*, ...):
    importing it before any test, where installed, makes them part of every test's baseline, not a leak of
    whichever test imports it first."""
    try:
        import vllm  # noqa: F401
    except Exception:  # not installed, or not importable here: its tests skip
        pass


@pytest.fixture(autouse=True)
def leaves_no_process_state(request):
    """Fails a test that leaves process-wide state behind (after putting it back), so the suite passes in any
    order. A test whose libraries change such state on purpose asks for `restores_process_state`."""
    before = ProcessState()
    yield
    changes = ProcessState().changes_since(before)
    if changes:
        before.restore()
        pytest.fail(f"{request.node.nodeid} left process-wide state behind: {'; '.join(changes)}. Restore it in the "
                    "test (monkeypatch.setenv, a fixture) or ask for the `restores_process_state` fixture.")


@pytest.fixture
def restores_process_state():
    """For tests of libraries that set process-wide state themselves (TRL's colocated vLLM sets RANK,
    WORLD_SIZE and MASTER_*, which made accelerate take the next test for a distributed run): puts it back."""
    before = ProcessState()
    yield
    before.restore()
