"""Package discovery for setuptools; pyproject.toml holds all the rest of the packaging.

The repository root is the `thinkgym` package (`package-dir` maps it to "."), which
`[tool.setuptools.packages.find]` cannot express: it would name the folders `agents.*` rather than
`thinkgym.agents.*`. So every folder under envs/, agents/ and rewards/ is found here and prefixed,
and a new subpackage reaches the wheel without a list to update (tests/test_packaging.py checks).
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

FOLDERS = ("envs", "agents", "rewards")

found = find_namespace_packages(str(Path(__file__).parent), include=[p for f in FOLDERS for p in (f, f + ".*")], exclude=["*.__pycache__"])
# script_name: the root is a package folder, and build_py leaves only the setup script out of it; under a
# PEP 517 build it would take the hook runner for that script and ship this file as thinkgym/setup.py.
setup(script_name="setup.py", packages=["thinkgym", *(f"thinkgym.{p}" for p in found)])
