"""Work that must be bounded in time from any thread: a helper process, killed when it overruns.

Signals (math-verify's timeouts) work only in the main thread, and a progress handler (SQLite's)
never fires inside one slow C call; killing a process is the bound that always holds. A
`WorkerPool` keeps idle processes of one program for reuse, so a call costs a pipe round trip and
only an overrun pays for a new process. The program reads and writes messages framed as a 4-byte
little-endian length and a body (a JSON request, optionally followed by a raw payload).
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time


class WorkerProcess:
    """One helper process running `source` with `python -c`; `request` is None if it did not answer."""

    def __init__(self, source: str, args: tuple[str, ...] = (), isolated: bool = True):
        self.owner = os.getpid()
        flags = ["-I", "-S"] if isolated else ["-I"]  # -S also drops site-packages: stdlib-only programs
        self.proc = subprocess.Popen([sys.executable, *flags, "-c", source, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def request(self, header: dict, payload: bytes | None, wait_s: float) -> dict | None:
        """Send a request and wait up to `wait_s` for the reply."""
        frames = [json.dumps(header).encode()] + ([payload] if payload is not None else [])
        try:
            self.proc.stdin.write(b"".join(struct.pack("<I", len(f)) + f for f in frames))
            self.proc.stdin.flush()
        except OSError:
            return None
        return self.receive(wait_s)

    def receive(self, wait_s: float) -> dict | None:
        """The next message, or None if none came within `wait_s` (or it was garbled)."""
        deadline = time.monotonic() + wait_s
        head = self._read(4, deadline)
        body = self._read(struct.unpack("<I", head)[0], deadline) if head is not None else None
        try:
            return json.loads(body) if body is not None else None
        except ValueError:
            return None

    def _read(self, n: int, deadline: float) -> bytes | None:
        buf, fd = b"", self.proc.stdout.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if os.getpid() == self.owner:  # a forked copy must not kill its parent's process
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class WorkerPool:
    """`WorkerProcess`es of one program: at most `max_workers` at once (None: no cap), at most
    `max_idle` kept for reuse; a forked child starts afresh.

    With `start_timeout_s`, the program greets with one message once it is ready (its imports
    done), and a new process is handed out only after that. Hand each worker back with `release`
    (it answered) or `discard` (it overran or died).
    """

    def __init__(self, source: str, args: tuple[str, ...] = (), isolated: bool = True, max_idle: int = 8,
                 start_timeout_s: float | None = None, max_workers: int | None = None):
        self.source, self.args, self.isolated, self.max_idle = source, args, isolated, max_idle
        self.start_timeout_s, self.max_workers = start_timeout_s, max_workers
        self._lock = threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._idle: list[WorkerProcess] = []
        self._slots = threading.BoundedSemaphore(self.max_workers) if self.max_workers else None

    def acquire(self) -> WorkerProcess:
        """An idle worker, or a new one; waits while `max_workers` are busy."""
        if self._slots is not None:
            self._slots.acquire()
        try:
            with self._lock:
                while self._idle:
                    w = self._idle.pop()
                    if w.alive():
                        return w
            w = WorkerProcess(self.source, self.args, self.isolated)
            if self.start_timeout_s is not None and w.receive(self.start_timeout_s) is None:
                w.kill()
                raise RuntimeError("a helper process failed to start (run its program by hand to see why)")
            return w
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def release(self, w: WorkerProcess) -> None:
        """Keep a worker that answered for the next caller (or kill it when enough are idle)."""
        with self._lock:
            keep = len(self._idle) < self.max_idle and w.alive() and os.getpid() == w.owner
            if keep:
                self._idle.append(w)
        if not keep:
            w.kill()
        if self._slots is not None:
            self._slots.release()

    def discard(self, w: WorkerProcess) -> None:
        """Kill a worker that overran or died."""
        w.kill()
        if self._slots is not None:
            self._slots.release()
