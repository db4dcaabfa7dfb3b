"""The program a sandbox worker runs: it executes each request's code and replies with its status.

`sandbox.py` runs this file's source with `python -I -S -c` inside bubblewrap, so it may import only
the standard library and must not import thinkgym. The code it runs shares its process and can
rewrite anything here, so nothing here is trusted: the host reads stdout and stderr itself from the
memfds it created, reaps stray processes itself, and accepts a reply only if it carries the random
nonce of the request it answers (a reply forged ahead of time, or left over, is refused).
"""

import ast
import json
import linecache
import os
import resource as R
import signal
import struct
import sys
import time
import traceback

def send(obj):
    data = json.dumps(obj).encode()
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(WFD, data):]


def recv_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(RFD, n - len(buf))
        if not chunk:
            os._exit(0)
        buf += chunk
    return buf


class TimeLimitExceeded(BaseException):
    """Not an Exception, so that the code's own `except Exception` does not swallow it."""


def on_limit(signum, frame):
    kind = "CPU" if signum == signal.SIGXCPU else "wall-clock"
    raise TimeLimitExceeded("the call ran past its %g s %s limit" % (LIMIT, kind))


def reap():
    """Every process but pid 1 (bwrap's init) and this worker was started by the code: kill it."""
    for _ in range(100):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, ME)]
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not others:
            return
        time.sleep(0.001)


def run(n, src):
    name = "<cell %d>" % n
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    tree = ast.parse(src, name, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), NS)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), NS)
        if value is not None:
            print(repr(value))


def user_traceback(exc):
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main():
    """Set up (drop to the worker uid, apply the limits), then answer requests until the pipe closes."""
    global cfg, RFD, WFD, LIMIT, ME, NS  # read by the functions above
    cfg = json.loads(sys.argv[1])
    RFD, WFD = cfg["rfd"], cfg["wfd"]
    if cfg["uid"] and os.getuid() == 0:
        for d in (".", "/tmp", "/dev/shm"):
            os.chown(d, cfg["uid"], cfg["uid"])
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    for name, value in cfg["limits"].items():
        R.setrlimit(getattr(R, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead
    signal.signal(signal.SIGXCPU, on_limit)
    signal.signal(signal.SIGALRM, on_limit)
    LIMIT = 0.0
    sys.path.extend(cfg["paths"])
    sys.argv = [""]
    for mod in cfg["preload"]:
        __import__(mod)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(cfg["out"], 1)  # the host's memfds: it reads them, capped, after each call
    os.dup2(cfg["err"], 2)
    for fd in (devnull, cfg["out"], cfg["err"]):
        os.close(fd)
    ME = os.getpid()
    NS = {"__name__": "__main__", "__builtins__": __builtins__}
    send({"ready": True})
    n = 0
    while True:
        (size,) = struct.unpack("<I", recv_exact(4))
        req = json.loads(recv_exact(size))
        n += 1
        used, LIMIT = sum(R.getrusage(R.RUSAGE_SELF)[:2]), req["limit"]
        status, tb = "ok", ""
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        try:
            R.setrlimit(R.RLIMIT_CPU, (int(used + LIMIT) + 1, R.RLIM_INFINITY))
            signal.setitimer(signal.ITIMER_REAL, LIMIT)
            try:
                run(n, req["code"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                sys.stdout.flush()
        except BaseException as exc:
            if os.getpid() != ME:
                os._exit(1)
            status = "timeout" if isinstance(exc, TimeLimitExceeded) else "error"
            tb = user_traceback(exc)
        if os.getpid() != ME:  # a process forked by the code that fell through to here
            os._exit(0)
        R.setrlimit(R.RLIMIT_CPU, (R.RLIM_INFINITY, R.RLIM_INFINITY))
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        if cfg["pidns"]:
            reap()
        if len(tb) > cfg["cap"]:
            tb = tb[: cfg["cap"] // 2] + "\n...\n" + tb[-cfg["cap"] // 2:]
        send({"nonce": req["nonce"], "status": status, "traceback": tb})


if __name__ == "__main__":
    main()
