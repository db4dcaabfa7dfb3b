"""A contained Python interpreter for model-written code: one persistent worker per episode.

Each worker is a Python process inside bubblewrap (`bwrap`) namespaces: no network, its own PID
namespace (so killing it kills every process it started), a read-only view of nothing but the
interpreter and its libraries, and a private tmpfs work dir. Inside, it runs as an unprivileged
uid of its own with rlimits on memory, CPU, processes, open files and file size, and a scrubbed
environment, and a seccomp filter (envs/seccomp.py) denies memory that RLIMIT_AS would not count
and namespaces of its own. The worker program is envs/sandbox_worker.py; the code it runs shares its
process, so the host trusts none of its replies but the one with the call's nonce, and reads the
output and kills stray processes itself. State (variables, imports) persists across the calls of
one `Sandbox`. A call that runs past its limit is interrupted, as a notebook's interrupt does, and
the state survives; a call stuck in C code past the limit, or one that crashes the worker, loses it
(`state_lost`), and the next call starts a fresh worker.

Starting a worker costs tens of milliseconds, so a `WorkerPool` keeps a few started in the
background; a call to a warm worker is a pipe round trip plus the code's own run time.

    with Sandbox() as sb:
        sb.run("x = 6 * 7")
        print(sb.run("x").stdout)   # "42\n"
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import select
import shutil
import signal
import site
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from . import seccomp

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "timeout", "crashed"]
WORK_DIR = "/sandbox"
_SITE_MOUNT = "/opt/site"
_GRACE_S = 1.0  # how long past its limit a call may take to stop on its own before it is killed
_START_TIMEOUT_S = 30.0
_MAX_MESSAGE = 16 << 20
# Unprivileged uids for workers when the host runs as root: one uid per worker, so that
# RLIMIT_NPROC (counted per uid) bounds each worker on its own.
_UID_BASE, _UID_SPAN = 1_000_000_000, 1_000_000_000
_SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
}


class SandboxUnavailable(RuntimeError):
    """Namespaces cannot be created here, and `unsafe=True` was not given."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one worker. `timeout` is per call (CPU and wall); memory is RLIMIT_AS."""

    timeout: float = 5.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_open_files: int = 128
    max_file_mb: int = 16
    tmpfs_mb: int = 64
    max_output_bytes: int = 64 << 10
    site_packages: bool = True
    preload: tuple[str, ...] = ()
    pool_size: int = 2
    unsafe: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or not 0 < self.timeout <= 3600:
            raise ValueError(f"timeout must be a number of seconds in (0, 3600]; got {self.timeout!r}")
        for name, low in (("memory_mb", 64), ("max_processes", 2), ("max_open_files", 16), ("max_file_mb", 1),
                          ("tmpfs_mb", 1), ("max_output_bytes", 256), ("pool_size", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
        if isinstance(self.preload, str) or not all(isinstance(m, str) for m in self.preload):
            raise ValueError(f"preload must be a list or tuple of module names; got {self.preload!r}")
        object.__setattr__(self, "preload", tuple(self.preload))  # hashable: configs key the pools


@dataclass
class ExecResult:
    """What one call returned. `state_lost`: the worker was killed, its variables are gone."""

    status: Status
    stdout: str = ""
    stderr: str = ""
    time: float = 0.0
    truncated: bool = False
    state_lost: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def output(self) -> str:
        """What a notebook shows: stdout, then the traceback or error if the call failed."""
        return self.stdout if self.ok else self.stdout + self.stderr


# The worker's program, run with `python -c` so that it needs no path inside the sandbox.
_WORKER_SOURCE = (Path(__file__).parent / "sandbox_worker.py").read_text()


# -- host side ----------------------------------------------------------------------------------
def _interpreter_paths() -> tuple[str, str, list[str]]:
    """The real interpreter, its install prefix, and the site-packages dirs that exist."""
    exe = os.path.realpath(sys.executable)
    dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
    return exe, os.path.realpath(sys.base_prefix), dirs


def _namespace_args() -> list[str]:
    # As root, bwrap runs privileged without a user namespace and the worker drops to its own uid
    # (a uid mapped onto root would be exempt from RLIMIT_NPROC); as a user, bwrap needs one.
    common = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    if os.geteuid() == 0:
        return common + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_CHOWN"]
    return common + ["--unshare-user"]


def _ro_bind(src: str, dest: str) -> list[str]:
    """A read-only bind whose parent dirs are world-readable (bwrap would make them 0700)."""
    parts = dest.strip("/").split("/")[:-1]
    parents = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    return [a for p in parents for a in ("--perms", "0755", "--dir", p)] + ["--ro-bind", src, dest]


def _mount_args(config: SandboxConfig) -> tuple[list[str], list[str]]:
    """bwrap's filesystem: /usr and the interpreter read-only, tmpfs work dirs, nothing else."""
    _, prefix, dirs = _interpreter_paths()
    args = ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "lib32", "sbin"):
        target = os.path.join("/", link)
        if os.path.islink(target):
            args += ["--symlink", os.readlink(target), target]
        elif os.path.isdir(target):
            args += ["--ro-bind", target, target]
    if not prefix.startswith("/usr/"):
        args += _ro_bind(prefix, prefix)
    paths = []
    if config.site_packages:
        for i, d in enumerate(d for d in dirs if not d.startswith(prefix + os.sep)):
            paths.append(f"{_SITE_MOUNT}/{i}")
            args += _ro_bind(d, paths[-1])
        paths += [d for d in dirs if d.startswith(prefix + os.sep)]
    size = str(config.tmpfs_mb << 20)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(16 << 20), "--tmpfs", "/dev/shm",  # for semaphores
             "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORK_DIR, "--remount-ro", "/", "--chdir", WORK_DIR]
    for k, v in _SANDBOX_ENV.items():
        args += ["--setenv", k, v]
    return args, paths


@lru_cache(maxsize=1)
def namespaces_available() -> tuple[bool, str]:
    """Whether bwrap can build the sandbox here, and why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False, "bubblewrap (bwrap) is not installed; install it (`apt-get install bubblewrap`, or `make sysdeps`)"
    mounts, _ = _mount_args(SandboxConfig(site_packages=False))
    try:
        filter_fd = seccomp.program_fd()
    except OSError as exc:
        return False, f"the sandbox's seccomp filter cannot be built: {exc}"
    try:
        r = subprocess.run([bwrap, *_namespace_args(), "--seccomp", str(filter_fd), *mounts, "/usr/bin/env", "true"],
                           env={}, capture_output=True, text=True, timeout=30, pass_fds=(filter_fd,))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap failed to start: {exc}"
    finally:
        os.close(filter_fd)
    if r.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {r.stderr.strip()}"
    return True, ""


def _check_safety(config: SandboxConfig) -> bool:
    """True when the sandbox is on; raise or warn (unsafe=True) when it cannot be."""
    ok, why = namespaces_available()
    if ok:
        return True
    if not config.unsafe:
        raise SandboxUnavailable(f"refusing to run model-written code without a sandbox: {why}. "
                                 "Pass unsafe=True to run it unsandboxed (rlimits only) at your own risk.")
    msg = f"UNSAFE: running model-written code WITHOUT a sandbox ({why}); it can read and write your files and reach the network"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    log.warning(msg)
    return False


_uid_lock = threading.Lock()
_uid_next = [0]


def _next_uid() -> int:
    with _uid_lock:
        _uid_next[0] = (_uid_next[0] + 1) % 10_000
        return _UID_BASE + (os.getpid() * 10_000 + _uid_next[0]) % _UID_SPAN


# Workers must be started from a thread that lives as long as the process: bwrap's
# --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that spawned it exits.
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list[str], fds: tuple[int, ...], cwd: str | None) -> subprocess.Popen:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawn")
    return _spawner.submit(subprocess.Popen, argv, pass_fds=fds, env=dict(_SANDBOX_ENV), cwd=cwd,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True, umask=0o022).result()


class _Worker:
    """One started worker process (bwrap and the interpreter in it), its two pipes and output memfds.

    The code runs in the worker's own process, so the host trusts none of it: it reads the output
    from its own copies of the memfds, kills stray processes itself, and takes a reply only with the
    request's nonce.
    """

    def __init__(self, config: SandboxConfig, sandboxed: bool):
        self.config = config
        self.started = time.perf_counter()
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        info_r, info_w = os.pipe() if sandboxed else (-1, -1)
        self._out, self._err = os.memfd_create("stdout"), os.memfd_create("stderr")
        uid = _next_uid() if os.geteuid() == 0 and sandboxed else 0
        exe, _, dirs = _interpreter_paths()
        limits = {"RLIMIT_AS": config.memory_mb << 20, "RLIMIT_NPROC": config.max_processes,
                  "RLIMIT_NOFILE": config.max_open_files, "RLIMIT_FSIZE": config.max_file_mb << 20, "RLIMIT_CORE": 0}
        self._tmp = None
        if sandboxed:
            mounts, paths = _mount_args(config)
            filter_fd = seccomp.program_fd()
            wrapper = [shutil.which("bwrap") or "bwrap", *_namespace_args(), "--info-fd", str(info_w),
                       "--seccomp", str(filter_fd), *mounts]
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="thinkgym-unsafe-")
            paths, wrapper = (dirs if config.site_packages else []), []
        worker_cfg = {"rfd": to_r, "wfd": from_w, "out": self._out, "err": self._err, "uid": uid, "limits": limits,
                      "paths": paths, "preload": list(config.preload), "cap": config.max_output_bytes, "pidns": sandboxed}
        argv = [*wrapper, exe, "-I", "-S", "-c", _WORKER_SOURCE, json.dumps(worker_cfg)]
        fds = (to_r, from_w) + ((info_w, filter_fd) if sandboxed else ())
        try:
            self.proc = _spawn(argv, fds + (self._out, self._err), self._tmp.name if self._tmp else None)
        finally:
            for fd in fds:
                os.close(fd)
        self._info_r = info_r
        self._init_pid = self._code_pid = -1
        self.ready = False
        self._finalizer = weakref.finalize(self, _kill, os.getpid(), self.proc, -1, self._to_w, self._from_r, info_r,
                                           self._out, self._err)
        # At exit, workers die with the process (bwrap --die-with-parent); killing them from an
        # exit hook would race with a pool thread still starting one.
        self._finalizer.atexit = False

    # -- framing ------------------------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        buf = b""
        while len(buf) < n:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([self._from_r], [], [], left)[0]:
                return None
            chunk = os.read(self._from_r, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _receive(self, deadline: float) -> dict | None:
        head = self._read_exact(4, deadline)
        if head is None:
            return None
        (size,) = struct.unpack("<I", head)
        body = self._read_exact(size, deadline) if size <= _MAX_MESSAGE else None
        try:
            msg = json.loads(body) if body is not None else None
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def wait_ready(self) -> None:
        """Block until the interpreter is up; raise with bwrap's own message if it failed."""
        if self.ready:
            return
        msg = self._receive(time.perf_counter() + _START_TIMEOUT_S)
        if not msg or not msg.get("ready"):
            self.kill()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"the sandbox worker failed to start: {err.strip() or 'no message'}")
        if self._info_r >= 0:
            with os.fdopen(self._info_r, "rb") as f:
                init_pid = int(json.loads(f.read() or b"{}").get("child-pid", 0))
            self._info_r = -1
            try:  # a pidfd, so that killing it later can never hit a recycled pid
                init_fd = os.pidfd_open(init_pid) if init_pid > 0 else -1
            except OSError:
                init_fd = -1
            if init_fd >= 0:  # the init's only child now is the worker
                self._init_pid, self._code_pid = init_pid, next(iter(_children(init_pid)), -1)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _kill, os.getpid(), self.proc, init_fd, self._to_w, self._from_r,
                                               init_fd, self._out, self._err)
            self._finalizer.atexit = False
        self.ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, code: str, timeout: float) -> ExecResult:
        t0 = time.perf_counter()
        nonce = secrets.token_hex(16)
        data = json.dumps({"code": code, "limit": timeout, "nonce": nonce}).encode()
        try:
            self._write_all(data)
        except OSError:
            msg = None
        else:
            msg = self._receive(t0 + timeout + _GRACE_S)
            while msg is not None and msg.get("nonce") != nonce:  # forged by the code, or left from a past call
                msg = self._receive(t0 + timeout + _GRACE_S)
        elapsed = time.perf_counter() - t0
        if msg is None or msg.get("status") not in ("ok", "error", "timeout"):
            timed_out = elapsed >= timeout
            if not timed_out:  # the worker died on its own: let bwrap report how
                try:
                    self.proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
            if timed_out:
                return ExecResult("timeout", "", f"TimeoutError: the call ran past its {timeout:g} s limit and was killed; "
                                  "the interpreter was restarted and its variables are lost\n", elapsed, state_lost=True)
            return ExecResult("crashed", "", f"the interpreter process died ({_exit_reason(self.proc.returncode)}); "
                              "it was restarted and its variables are lost\n", elapsed, state_lost=True)
        self._reap()
        out, out_cut = _grab(self._out, self.config.max_output_bytes)
        err, err_cut = _grab(self._err, self.config.max_output_bytes)
        return ExecResult(msg["status"], out, err + str(msg.get("traceback", "")), elapsed, out_cut or err_cut)

    def _reap(self) -> None:
        """Kill every process in the sandbox but its init and the worker (the worker does it too,
        but the code it runs can switch that off)."""
        if self._init_pid < 0:
            return
        try:
            ns = os.readlink(f"/proc/{self._init_pid}/ns/pid")
        except OSError:
            return
        for _ in range(100):
            others = [p for p in _descendants(self._init_pid) if p != self._code_pid and _running(p)]
            if not others:
                return
            for pid in others:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:  # the pid may have been recycled since it was listed: kill only inside the sandbox
                    if os.readlink(f"/proc/{pid}/ns/pid") == ns:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.001)

    def _write_all(self, data: bytes) -> None:
        buf = struct.pack("<I", len(data)) + data
        while buf:
            buf = buf[os.write(self._to_w, buf):]

    def kill(self) -> None:
        """Kill the worker and everything it started, and wait until they are gone."""
        self._finalizer()
        if self._tmp is not None:
            self._tmp.cleanup()


def _children(pid: int) -> list[int]:
    """The pids of a process's children (of all its threads), from /proc."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`: in a PID namespace, orphans are re-parented to its init, so the
    init's descendants are everything in it."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _running(pid: int) -> bool:
    """Whether a process still runs (not a zombie that only waits for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _grab(fd: int, cap: int) -> tuple[str, bool]:
    """A call's output from its memfd, its middle cut to fit `cap`; the file is emptied for the next."""
    size = os.fstat(fd).st_size
    if size <= cap:
        data, cut = os.pread(fd, size, 0), False
    else:
        half = cap // 2
        data = os.pread(fd, half, 0) + b"\n...[%d bytes omitted]...\n" % (size - 2 * half) + os.pread(fd, half, size - half)
        cut = True
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return data.decode("utf-8", "replace"), cut


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"killed by {signal.Signals(code - 128).name}"
    return f"exit status {code}"


def _kill(owner: int, proc: subprocess.Popen, init_fd: int, *fds: int) -> None:
    if os.getpid() != owner:  # a forked copy of the object: the worker is the parent's, not ours
        return
    # The namespace's init exits only once the kernel has killed and reaped every other process
    # in it; its pidfd turns readable then. So once it has, nothing the code started is left.
    if init_fd >= 0:
        try:
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
            select.select([init_fd], [], [], 10.0)
            proc.wait(1.0)  # bwrap reaps its init and exits
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class WorkerPool:
    """Keeps `size` workers started in the background, so that an episode's first call is fast."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.sandboxed = _check_safety(config)
        self._idle: deque[_Worker] = deque()
        self._cond = threading.Condition()
        self._closed = False
        if config.pool_size:
            threading.Thread(target=self._fill, name="sandbox-pool", daemon=True).start()

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._idle) >= self.config.pool_size:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                w = _Worker(self.config, self.sandboxed)
                w.wait_ready()
            except Exception as exc:  # keep serving: acquire() starts workers itself and will raise
                if self._closed:
                    return
                log.warning("sandbox pool could not start a worker: %s", exc)
                time.sleep(1.0)
                continue
            with self._cond:
                if not self._closed:
                    self._idle.append(w)
                    self._cond.notify_all()
                    continue
            w.kill()
            return

    def acquire(self) -> _Worker:
        """A started worker: an idle one from the pool, or a new one."""
        with self._cond:
            w = self._idle.popleft() if self._idle else None
            self._cond.notify_all()
        if w is None or not w.alive():
            w = _Worker(self.config, self.sandboxed)
        w.wait_ready()
        return w

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._cond.notify_all()
        for w in idle:
            w.kill()


_pools: dict[SandboxConfig, WorkerPool] = {}
_pools_lock = threading.Lock()


def get_pool(config: SandboxConfig) -> WorkerPool:
    """The process-wide pool for `config` (started on first use)."""
    with _pools_lock:
        if config not in _pools:
            _pools[config] = WorkerPool(config)
        return _pools[config]


def shutdown_pools() -> None:
    """Kill every idle pooled worker (also done at interpreter exit)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


def _after_fork_in_child() -> None:
    # A forked child shares neither the spawner thread nor the pools' threads: start afresh.
    global _spawner
    _spawner = None
    _pools.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown_pools)


@dataclass
class Sandbox:
    """One episode's interpreter. `run` keeps variables between calls; `close` kills everything."""

    config: SandboxConfig = field(default_factory=SandboxConfig)
    _worker: _Worker | None = field(default=None, init=False, repr=False)

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run `code` in the episode's interpreter and return what it printed, or its error."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str; got {type(code).__name__}")
        if self._worker is None or not self._worker.alive():
            self._worker = get_pool(self.config).acquire()
        result = self._worker.call(code, float(timeout or self.config.timeout))
        if result.state_lost:
            self._worker = None
        return result

    @property
    def sandboxed(self) -> bool:
        return get_pool(self.config).sandboxed

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
