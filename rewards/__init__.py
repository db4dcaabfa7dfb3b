"""Pure reward functions and schedules. This package imports nothing else of thinkgym."""

from .math import after_think, correctness, extract_answer, last_boxed, math_equal

__all__ = ["after_think", "correctness", "extract_answer", "last_boxed", "math_equal"]
