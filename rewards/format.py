"""Correctness and format rewards, and the repetition-loop detector they share with LASER-DE/AutoThink."""

from __future__ import annotations

import numpy as np

from .base import Sample
from .math import THINK_CLOSE
from .registry import register_reward


def has_repetition_loop(text: str, min_repeats: int = 10, max_ngram: int = 30, max_word_chars: int = 120) -> bool:
    """Whether the text degenerates into a loop.

    Detector (AutoThink's rule, on whitespace-separated words): some n-gram with n <= `max_ngram`
    occurs `min_repeats` times in a row, or a single "word" is at least `max_word_chars` long
    (loops without spaces). An n-gram repeated k times in a row is exactly a run of n·(k−1)
    consecutive positions i with word[i] == word[i+n], which numpy finds in O(len · max_ngram).
    """
    if min_repeats < 2 or max_ngram < 1 or max_word_chars < 1:
        raise ValueError("min_repeats must be >= 2, max_ngram and max_word_chars >= 1")
    words = text.split()
    if any(len(w) >= max_word_chars for w in words):
        return True
    if len(words) < min_repeats:
        return False
    _, ids = np.unique(words, return_inverse=True)
    for n in range(1, max_ngram + 1):
        need = n * (min_repeats - 1)
        if len(ids) - n < need:
            break
        eq = np.concatenate(([False], ids[:-n] == ids[n:], [False]))
        edges = np.flatnonzero(np.diff(eq.astype(np.int8)))
        if len(edges) and (edges[1::2] - edges[::2]).max() >= need:
            return True
    return False


@register_reward("correctness", bounds=((1.0, 1.0), (0.0, 0.0)))
def correctness_reward(sample: Sample) -> float:
    """1 if the last `\\boxed{}` after `</think>` equals the gold answer by math-verify, else 0."""
    return float(sample.is_correct)


@register_reward("laser_correctness", bounds=((1.0, 1.0), (-1.0, -0.5)))
def laser_correctness(sample: Sample) -> float:
    """LASER's base score: +1 correct, −0.5 wrong but answered, −1 no `</think>` or no box."""
    if sample.is_correct:
        return 1.0
    return -1.0 if sample.format_error else -0.5


@register_reward("format_think")
def format_think(sample: Sample) -> float:
    """Open-RS format reward: 1 if the response closes its think block exactly once.

    Open-RS matches `"\\n</think>\\n"`; we count bare `</think>` since built-in tasks write no newlines.
    """
    return float(sample.text.count(THINK_CLOSE) == 1)


@register_reward("format_boxed")
def format_boxed(sample: Sample) -> float:
    """1 if there is a `\\boxed{}` answer after `</think>`."""
    return float(not sample.format_error)


@register_reward("no_repetition")
def no_repetition(sample: Sample, min_repeats: int = 10, max_ngram: int = 30) -> float:
    """1 unless the response is stuck in a loop (see `has_repetition_loop`)."""
    return float(not has_repetition_loop(sample.text, min_repeats, max_ngram))
