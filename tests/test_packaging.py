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
