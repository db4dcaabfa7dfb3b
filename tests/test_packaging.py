"""The wheel holds every module: an editable install finds a new subpackage that the wheel would
silently leave out, so build the wheel and compare it with the source folders."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("envs", "agents", "rewards", "integrations")


def source_modules() -> set[str]:
    mods = {"thinkgym/__init__.py"}
    for folder in FOLDERS:
        mods |= {f"thinkgym/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*.py")
                 if "__pycache__" not in p.parts}
    return mods


@pytest.mark.slow
def test_the_wheel_holds_every_module_under_envs_agents_rewards_and_integrations(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build leaves build/ and egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "__init__.py"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("thinkgym-*.whl")
    inside = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = source_modules()
    assert len(expected) > 40
    assert expected - inside == set(), "modules missing from the wheel: list their package in pyproject.toml"


# Installed by `make test` (the dev extra and its dependencies) but not by `make demo`'s core install
# (`pip install -e ".[sat]"`); a fresh clone's demo must not need any of them.
NOT_IN_CORE = ("pandas", "datasets", "trl", "vllm", "peft", "accelerate", "stable_baselines3", "openenv", "fastapi",
               "uvicorn", "gradio")


def test_the_demo_imports_nothing_beyond_the_core_install():
    """`examples/demo.py --help` runs every import the demo makes, with the packages that only the test install
    brings blocked; a plot helper that imported pandas once broke `make demo` in a fresh clone."""
    block = ("import sys, runpy\n"
             f"sys.modules.update(dict.fromkeys({NOT_IN_CORE!r}))\n"  # None there: import fails, find_spec says absent
             "sys.argv = ['demo.py', '--help']\n"
             f"runpy.run_path({str(ROOT / 'examples' / 'demo.py')!r}, run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GRPO" in out.stdout
