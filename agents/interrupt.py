"""Ctrl-C that saves and leaves at once.

Inside `stop_on_signal()` the first SIGINT (Ctrl-C) or SIGTERM does not raise KeyboardInterrupt wherever
the program happens to be: it records a stop request, which long loops check at their next safe point
(after an optimizer step), where they save what a resume needs and return. Work that holds nothing worth
saving (an evaluation) runs inside `abortable()`, where the first signal stops it at once by raising
`Interrupted`. A second signal exits immediately. The exit code is the shell's for the signal (`exit_code`):
130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised inside `abortable()` work by the first stop signal. A BaseException, as KeyboardInterrupt is,
    so that an `except Exception` on the way does not swallow it."""


class _Request:
    signum: int | None = None  # the signal that asked to stop, if any
    depth = 0  # nested stop_on_signal() blocks; the outermost installs and restores the handlers
    abortable = 0  # nested abortable() blocks
    previous: dict = {}


_request = _Request()


def _say(text: str) -> None:
    os.write(2, text.encode())  # not print(): the handler may run while the main thread is inside a write to stderr


def _handle(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if _request.signum is not None:
        _say(f"\n{name} again: exiting now, without saving\n")
        os._exit(exit_code(signum))
    _request.signum = signum
    if _request.abortable:
        _say(f"\n{name}: stopping now (send it again to exit at once)\n")
        raise Interrupted(signum)
    _say(f"\n{name}: stopping at the next safe point, then saving (send it again to exit at once)\n")


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Within, SIGINT and SIGTERM request a stop (see the module docstring). Blocks nest: the outermost
    installs the handlers, clears any earlier request, and restores the previous handlers on leaving.
    Outside the main thread (where Python
    cannot install handlers) it does nothing."""
    outer = _request.depth == 0
    if outer and threading.current_thread() is not threading.main_thread():
        yield
        return
    if outer:
        _request.signum = None
        _request.previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _request.depth += 1
    try:
        yield
    finally:
        _request.depth -= 1
        if outer:
            for s, h in _request.previous.items():
                signal.signal(s, h)


@contextmanager
def abortable(enabled: bool = True) -> Iterator[None]:
    """Work that a stop signal may cut short: within it the first signal raises `Interrupted` at once (and
    entering it after a stop was requested raises too). `enabled=False` makes it a plain block, for work
    that must not stop halfway (a collective that other processes wait in)."""
    if not enabled:
        yield
        return
    if requested() is not None:
        raise Interrupted(requested())
    _request.abortable += 1
    try:
        yield
    finally:
        _request.abortable -= 1


def requested() -> int | None:
    """The signal that asked the current `stop_on_signal()` block to stop; None if none did, or outside one."""
    return _request.signum if _request.depth else None


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by `signum`: 128 + its number."""
    return 128 + int(signum)


def describe(signum: int) -> str:
    return signal.Signals(signum).name
