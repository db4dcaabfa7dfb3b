"""Math problems from a file (jsonl or parquet) or a Hugging Face dataset, scored by math-verify.

Fields are mapped by name (`fields={"problem": "question"}`); common names are found on their own.
GSM8K-style answers (a worked solution ending in `#### 42`) keep only the number after `####`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinkgym.rewards.math import math_equal

from .base import Problem, Task, finish

PROMPT_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
_FIELD_CANDIDATES = {
    "problem": ("problem", "question", "prompt", "query"),
    "answer": ("answer", "final_answer", "ground_truth", "target"),
    "solution": ("solution", "reasoning", "rationale"),
}


def gold_answer(raw: Any) -> str:
    """The gold answer of a record: GSM8K's `#### 42` tail, or the field as a string."""
    text = str(raw)
    return text.split("####")[-1].strip().replace(",", "") if "####" in text else text.strip()


def load_records(path: str, split: str = "test") -> list[dict]:
    """Rows of a jsonl or parquet file, or of a Hugging Face dataset name where reachable."""
    p = Path(path)
    if p.suffix == ".jsonl" or p.suffix == ".json":
        if not p.exists():
            raise ValueError(f"path={path!r}: dataset file not found")
        with p.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if p.suffix == ".parquet":
        if not p.exists():
            raise ValueError(f"path={path!r}: dataset file not found")
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if p.exists() or "/" not in path or path.startswith((".", "/")):
        raise ValueError(f"path={path!r}: expected an existing .jsonl or .parquet file, or a Hugging Face dataset name")
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"path={path!r} looks like a Hugging Face dataset name; install `datasets` to load it") from exc
    try:
        return list(datasets.load_dataset(path, split=split))
    except Exception as exc:
        raise ValueError(f"path={path!r}: could not load the Hugging Face dataset ({exc.__class__.__name__}: {exc})") from exc


@dataclass
class MathDatasetConfig:
    path: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    split: str = "test"
    prompt_suffix: str = PROMPT_SUFFIX

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path is required for the math_dataset task (a .jsonl or .parquet file, or a dataset name)")
        unknown = set(self.fields) - set(_FIELD_CANDIDATES)
        if unknown:
            raise ValueError(f"fields has unknown keys {sorted(unknown)}; accepted keys: {sorted(_FIELD_CANDIDATES)}")


class MathDatasetTask(Task):
    name = "math_dataset"

    def __init__(self, **kwargs) -> None:
        self.config = MathDatasetConfig(**kwargs)
        self.records = load_records(self.config.path, self.config.split)
        if not self.records:
            raise ValueError(f"path={self.config.path!r}: the dataset is empty")
        self.columns = {k: self._column(k, self.records[0]) for k in ("problem", "answer", "solution")}

    def _column(self, role: str, row: dict) -> str | None:
        if role in self.config.fields:
            name = self.config.fields[role]
            if name not in row:
                raise ValueError(f"fields[{role!r}]={name!r} is not a field of {self.config.path!r}; fields: {sorted(row)}")
            return name
        found = next((c for c in _FIELD_CANDIDATES[role] if c in row), None)
        if found is None and role != "solution":
            raise ValueError(
                f"{self.config.path!r} has no {role} field (looked for {_FIELD_CANDIDATES[role]}); "
                f"its fields are {sorted(row)}: map one with fields={{{role!r}: NAME}}"
            )
        return found

    def __len__(self) -> int:
        return len(self.records)

    def index(self, seed: int) -> int:
        """Seeds map onto the records in a fixed shuffled order, so any seed range covers them."""
        order = np.random.default_rng(0).permutation(len(self.records))
        return int(order[seed % len(self.records)])

    def sample(self, seed: int) -> Problem:
        i = self.index(seed)
        row = self.records[i]
        prompt = str(row[self.columns["problem"]]) + self.config.prompt_suffix
        return Problem(prompt, gold_answer(row[self.columns["answer"]]), seed, {k: row[k] for k in ("level",) if k in row}, {"index": i})

    def answers_match(self, pred: str, gold: str) -> bool:
        return math_equal(pred, gold)

    def demonstration(self, seed: int) -> str:
        row = self.records[self.index(seed)]
        col = self.columns["solution"]
        trace = str(row[col]) if col else str(row[self.columns["answer"]])
        return finish(trace.split("####")[0].rstrip() + "\n", gold_answer(row[self.columns["answer"]]))
