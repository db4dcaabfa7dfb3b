"""agents/ is a hall (policy, types, distributed, evaluate, plot, cli) and three rooms: rollout/ (engines,
sampling, the collector), learner/ (GRPO, its run, the SFT warm start) and methods/ (REDI, R2R, planning,
sampling traces). Rollout never imports the learner or the methods, so sampling and evaluation load neither;
the learner never imports the methods, which build on it."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "agents"
FORBIDDEN = ("thinkgym.agents.learner", "thinkgym.agents.methods")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("thinkgym", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def module_file(name: str) -> Path | None:
    """The source of a thinkgym.agents module or package, or None for anything else."""
    if not (name == "thinkgym.agents" or name.startswith("thinkgym.agents.")):
        return None
    base = ROOT.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, with relative imports resolved.
    `from pkg import name` counts pkg.name where that is a module, else pkg."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            found.add(mod)
            found |= {f"{mod}.{alias.name}" for alias in node.names if module_file(f"{mod}.{alias.name}")}
    return found


def test_rollout_never_imports_the_learner_or_the_methods():
    """Directly, and through the hall: follow every thinkgym.agents import out of rollout/."""
    seen, todo, via = set(), [module_name(p) for p in sorted((AGENTS / "rollout").rglob("*.py"))], {}
    assert "thinkgym.agents.rollout.hf.engine" in todo
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in imported_modules(module_file(name)):
            if module_file(dep) and dep not in seen:
                via.setdefault(dep, name)
                todo.append(dep)
    bad = sorted(m for m in seen if m.startswith(FORBIDDEN))
    assert not bad, {m: via[m] for m in bad}  # each offender, with the module that imported it


def test_the_learner_never_imports_the_methods():
    """Directly or through the hall: the methods build on the learner (its log-probs, optimizer, checkpoints, SFT)."""
    bad = {}
    for path in sorted((AGENTS / "learner").rglob("*.py")):
        seen, todo = set(), [module_name(path)]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += [dep for dep in imported_modules(module_file(name)) if module_file(dep) and dep not in seen]
        offenders = sorted(m for m in seen if m.startswith("thinkgym.agents.methods"))
        if offenders:
            bad[str(path.relative_to(ROOT))] = offenders
    assert bad == {}


def test_eval_help_loads_neither_the_learner_nor_tensorboard():
    code = ("import json, sys\n"
            "from thinkgym.agents.cli import main\n"
            "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules = json.loads(out.splitlines()[-1])
    assert "thinkgym.agents.cli" in modules
    loaded = [m for m in modules if m.startswith(("thinkgym.agents.learner", "thinkgym.agents.methods", "tensorboard",
                                                  "torch.utils.tensorboard"))]
    assert loaded == []


def test_rewards_import_without_transformers_torch_or_any_environment():
    """`thinkgym.rewards` is the bottom layer, used inside other trainers' reward functions: importing it
    loads no model library and no environment. (Gymnasium loads: `import thinkgym` registers the ids.)"""
    code = "import json, sys\nimport thinkgym.rewards\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules = json.loads(out.splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in ("transformers", "torch", "tokenizers", "math_verify")
             or (m.startswith("thinkgym.envs.") and m != "thinkgym.envs.registration")]
    assert heavy == []
    code = "import gymnasium as gym\nimport thinkgym\nprint(type(gym.make('DelethinkDemo-v0').unwrapped).__name__)\n"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["DelethinkEnv"]


def test_nothing_below_the_integrations_imports_them():
    """integrations/ sits on top of envs/ and agents/ (whose types its adapters reuse); nothing imports it back."""
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m and m.startswith("thinkgym.integrations"))
           for folder in ("envs", "agents", "rewards") for p in sorted((ROOT / folder).rglob("*.py"))}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_integrations_import_without_trl_or_verl_and_name_them_when_used():
    """The adapters load neither trainer until used; without it, using one names the package and its pip command."""
    code = ("import json, sys\n"
            "import thinkgym.integrations.trl as t, thinkgym.integrations.verl as v\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'verl', 'datasets'))\n"
            "sys.modules['trl'] = sys.modules['verl'] = None  # as if neither were installed\n"
            "errors = []\n"
            "for use in (lambda: t.EnvRollout('LongCoT-v0', None), lambda: v.ThinkgymAgentLoop):\n"
            "    try:\n        use()\n    except ImportError as exc:\n        errors.append(str(exc))\n"
            "print(json.dumps([loaded, errors]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, errors = json.loads(out.splitlines()[-1])
    assert loaded == []
    assert len(errors) == 2
    assert "needs trl" in errors[0] and "pip install 'trl>=1.16'" in errors[0]
    assert "needs verl" in errors[1] and "pip install 'verl>=0.9'" in errors[1]


def test_the_registry_is_a_leaf_and_rewards_import_nothing_else_of_ours():
    """`thinkgym.registry` imports nothing of thinkgym's, so the bottom layer (rewards) may use it; rewards import
    nothing else of ours."""
    assert {m for m in imported_modules(ROOT / "registry.py") if m and m.startswith("thinkgym")} == set()
    ours = {m for p in sorted((ROOT / "rewards").rglob("*.py")) for m in imported_modules(p)
            if m and m.startswith("thinkgym") and not m.startswith("thinkgym.rewards")}
    assert ours == {"thinkgym.registry"}


def test_the_main_names_are_exported_from_thinkgym_agents():
    """`from thinkgym.agents import GRPOTrainer, GRPOConfig, make_engine` works, and every exported name is the
    object its module defines (they load on first use: test_eval_help_loads_neither_the_learner_nor_tensorboard)."""
    import importlib

    import thinkgym.agents as agents
    from thinkgym.agents import GRPOConfig, GRPOTrainer, make_engine  # noqa: F401

    for name in agents.__all__:
        assert getattr(agents, name) is getattr(importlib.import_module(f"thinkgym.agents.{agents._HOME[name]}"), name)
