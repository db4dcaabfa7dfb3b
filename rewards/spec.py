"""Reward specs: one config line such as `"correctness + 0.5*laser_d(target_length=2048)"`.

Grammar (parsed with Python's `ast`, nothing is evaluated): a sum of terms `[number *] name[(k=v, ...)]`
(or `name * number`), joined by `+`/`-`; argument values are number, string, bool or None literals.
Each name appears once; its value is logged as `rewards/<name>/mean`. The total is Σ weight · value.
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Reward, Sample
from .registry import get_reward


@dataclass
class RewardOutput:
    """Per-sample totals and each component's *unweighted* values."""

    total: list[float]
    components: dict[str, list[float]]

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """`{prefix}/<name>/mean` per component and `{prefix}/total/mean`."""
        out = {f"{prefix}/{n}/mean": float(np.mean(v)) if v else float("nan") for n, v in self.components.items()}
        out[f"{prefix}/total/mean"] = float(np.mean(self.total)) if self.total else float("nan")
        return out


class CompositeReward(Reward):
    """A weighted sum of named rewards; stateful parts are updated and checkpointed together."""

    def __init__(self, parts: Sequence[tuple[str, float, Reward]], spec: str = ""):
        self.parts = list(parts)
        self.spec = spec
        self.name = "total"
        self.weights = {name: w for name, w, _ in self.parts}
        self.stateful = any(r.stateful for _, _, r in self.parts)
        self.raw_advantage = any(r.raw_advantage for _, _, r in self.parts)

    def __getitem__(self, name: str) -> Reward:
        for n, _, r in self.parts:
            if n == name:
                return r
        raise KeyError(f"no component {name!r} in reward spec {self.spec!r}; components: {list(self.weights)}")

    def compute(self, samples: Sequence[Sample]) -> RewardOutput:
        components = {name: r(samples) for name, _, r in self.parts}
        total = [sum(self.weights[n] * components[n][i] for n in components) for i in range(len(samples))]
        return RewardOutput(total, components)

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        return self.compute(samples).total

    @property
    def monitor_due(self) -> bool:
        """Whether a component wants monitor-set rollouts passed to this step's `update`."""
        return any(getattr(r, "monitor_due", False) for _, _, r in self.parts)

    def update(self, samples: Sequence[Sample], monitor: Sequence[Sample] | None = None) -> None:
        """Once per step, after `compute` (HAPO scores against the history from before this step)."""
        for _, _, r in self.parts:
            r.update(samples, monitor)

    def openings(self, group_size: int) -> list[str] | None:
        """The one component's forced openings; two components forcing theirs cannot both be sampled."""
        forced = {n: o for n, _, r in self.parts if (o := r.openings(group_size)) is not None}
        if len(forced) > 1:
            raise ValueError(f"reward spec {self.spec!r}: {sorted(forced)} each force the response openings; "
                             "keep one of them")
        return next(iter(forced.values()), None)

    def missing_reference(self, prompt_ids: Iterable[Hashable]) -> set[Hashable]:
        ids = list(prompt_ids)
        return set().union(*(r.missing_reference(ids) for _, _, r in self.parts))

    def set_reference(self, samples: Sequence[Sample]) -> None:
        for _, _, r in self.parts:
            r.set_reference(samples)

    def state_dict(self) -> dict[str, Any]:
        return {n: r.state_dict() for n, _, r in self.parts if r.stateful}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, _, r in self.parts:
            if r.stateful:
                if n not in state:
                    raise KeyError(f"checkpoint has no state for reward {n!r}; it has {sorted(state)}")
                r.load_state_dict(state[n])

    def metrics(self) -> dict[str, float]:
        """State scalars as `<name>/<key>` (log them under `rewards/`)."""
        return {f"{n}/{k}": v for n, _, r in self.parts for k, v in r.metrics().items()}

    def check_dominance(self) -> None:
        """If a component requires it, every correct sample must outscore every wrong one."""
        if not any(r.requires_dominance for _, _, r in self.parts):
            return
        worst_correct = best_wrong = 0.0
        for name, w, r in self.parts:
            if r.bounds is None:
                continue
            (c_lo, c_hi), (w_lo, w_hi) = r.bounds
            worst_correct += w * (c_lo if w >= 0 else c_hi)
            best_wrong += w * (w_hi if w >= 0 else w_lo)
        if worst_correct <= best_wrong:
            raise ValueError(f"reward spec {self.spec!r} breaks correctness dominance: a correct answer can score "
                             f"{worst_correct:g} and a wrong one {best_wrong:g}; raise the correctness weight or "
                             "lower the shaping weights")


_SYNTAX = ("a sum of terms like 'correctness + 0.5*laser_d(target_length=2048) - 0.1*overlong'")


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    return None


def _literal(node: ast.AST, where: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        value = []
    if not isinstance(value, (int, float, str, bool, type(None))):
        raise ValueError(f"arguments of {where} must be number, string, bool or None literals; "
                         f"got {ast.unparse(node)!r}")
    return value


def _reward_ref(node: ast.AST) -> tuple[str, dict[str, Any]]:
    if isinstance(node, ast.Name):
        return node.id, {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError(f"'**' is not allowed in a reward spec: {ast.unparse(node)!r}")
            kwargs[kw.arg] = _literal(kw.value, node.func.id)
        return node.func.id, kwargs
    raise ValueError(f"expected a reward name or name(key=value, ...); got {ast.unparse(node)!r}; write {_SYNTAX}")


def _terms(node: ast.AST, sign: float, out: list[tuple[float, ast.AST]]) -> None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        _terms(node.left, sign, out)
        _terms(node.right, -sign if isinstance(node.op, ast.Sub) else sign, out)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _number(node.left), _number(node.right)
        if (left is None) == (right is None):
            raise ValueError(f"a term must be number*reward; got {ast.unparse(node)!r}; write {_SYNTAX}")
        out.append((sign * (left if left is not None else right), node.right if left is not None else node.left))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _terms(node.operand, -sign, out)
    else:
        out.append((sign, node))


def parse_reward_spec(spec: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> CompositeReward:
    """Build the weighted sum a spec describes; `params` gives extra arguments per name (e.g. from YAML).

    Raises ValueError for bad syntax, unknown names (listing the registered ones), repeated names,
    bad arguments (negative lengths ...), and weights that break a method's correctness rule.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward spec must be a non-empty string; got {spec!r}; write {_SYNTAX}")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"reward spec {spec!r} is not valid: {err.msg}; write {_SYNTAX}") from None
    terms: list[tuple[float, ast.AST]] = []
    _terms(tree.body, 1.0, terms)
    params = dict(params or {})
    parts: list[tuple[str, float, Reward]] = []
    for weight, node in terms:
        name, kwargs = _reward_ref(node)
        if any(name == n for n, _, _ in parts):
            raise ValueError(f"reward {name!r} appears twice in spec {spec!r}; combine its weights")
        extra = dict(params.pop(name, {}))
        clash = extra.keys() & kwargs.keys()
        if clash:
            raise ValueError(f"reward {name!r}: {sorted(clash)} given both in the spec and in params")
        try:
            reward = get_reward(name, **kwargs, **extra)
        except ValueError as err:
            raise ValueError(f"reward spec {spec!r}: {err}") from None
        parts.append((name, weight, reward))
    if params:
        raise ValueError(f"params given for rewards not in the spec {spec!r}: {sorted(params)}")
    composite = CompositeReward(parts, spec)
    for _, _, r in parts:
        r.check_weights(composite.weights)
    composite.check_dominance()
    return composite
