"""The code sandbox: persistent state, and a corpus of hostile code that must stay contained."""

import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import thinkgym
from thinkgym.envs import sandbox as sbx
from thinkgym.envs.sandbox import Sandbox, SandboxConfig, SandboxUnavailable

REPO = Path(thinkgym.__file__).resolve().parent
FAST = SandboxConfig(timeout=1.0)  # the corpus's loops and bombs hit a 1 s limit, not 5 s

pytestmark = pytest.mark.skipif(not sbx.namespaces_available()[0],
                                reason=f"no sandbox here: {sbx.namespaces_available()[1]}")


def sandbox_uids() -> list[psutil.Process]:
    """Every live process that runs as a sandbox worker uid, or is a bwrap we started."""
    out = []
    for p in psutil.process_iter(["uids", "name", "ppid"]):
        uid = p.info["uids"].real if p.info["uids"] else -1
        if sbx._UID_BASE <= uid < sbx._UID_BASE + sbx._UID_SPAN or (p.info["name"] == "bwrap" and p.info["ppid"] == os.getpid()):
            out.append(p)
    return out


def test_state_persists_and_tracebacks_come_back():
    with Sandbox() as sb:
        assert sb.run("import math\nx = 6 * 7").ok
        r = sb.run("print(math.sqrt(x * x))\nx + 1")  # a last expression is shown, as in a notebook
        assert (r.status, r.stdout, r.stderr) == ("ok", "42.0\n43\n", "")
        r = sb.run("def f(v):\n    return 1 / v\nf(0)")
        assert r.status == "error" and r.stdout == ""
        assert "ZeroDivisionError: division by zero" in r.stderr and 'File "<cell 3>", line 2, in f' in r.stderr
        assert "_WORKER" not in r.stderr and "json.loads" not in r.stderr  # only the user's frames
        assert sb.run("print(x)").stdout == "42\n"  # an error keeps the state
        assert sb.run("def g(:").status == "error"
        assert sb.run("open('notes.txt', 'w').write('kept')").ok and sb.run("print(open('notes.txt').read())").stdout == "kept\n"


def test_ordinary_maths_code_works():
    with Sandbox() as sb:
        r = sb.run("import numpy as np, sympy\nprint(int(np.arange(10).sum()), sympy.factorint(2**32 + 1))")
        assert r.ok and r.stdout == "45 {641: 1, 6700417: 1}\n"
        r = sb.run("import multiprocessing as mp\nwith mp.Pool(2) as p:\n    print(p.map(abs, [-1, -2]))")
        assert r.ok and r.stdout == "[1, 2]\n"
        assert sb.run("open('/tmp/t', 'w').write('t'); print(open('/tmp/t').read())").stdout == "t\n"


def test_warm_calls_take_milliseconds():
    with Sandbox() as sb:
        sb.run("pass")
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            assert sb.run("print(1 + 1)").stdout == "2\n"
            times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.02


def _check_recovers(sb: Sandbox) -> None:
    assert sb.run("print('still working')").stdout == "still working\n"
    assert subprocess.run(["true"]).returncode == 0  # and the machine can still start processes


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/passwd", str(REPO / "envs" / "sandbox.py"), "host-tmp"])
def test_files_outside_the_work_dir_cannot_be_read(path, tmp_path):
    if path == "host-tmp":  # the host's /tmp: the sandbox has a private one
        path = str(tmp_path / "secret.txt")
        Path(path).write_text("hunter2")
    with Sandbox(FAST) as sb:
        r = sb.run(f"import os\nprint(os.path.exists({path!r}))\nopen({path!r}).read()")
        assert r.status == "error" and r.stdout == "False\n" and ("FileNotFoundError" in r.stderr or "IsADirectoryError" in r.stderr)
        r = sb.run("import os; print(sorted(os.listdir('/')))")
        assert "'work'" not in r.stdout and "'etc'" not in r.stdout and "'home'" not in r.stdout
        _check_recovers(sb)


@pytest.mark.parametrize("path", ["/usr/pwned", "/pwned", "/proc/pwned", str(REPO / "pwned")])
def test_writes_outside_the_work_dir_fail(path):
    with Sandbox(FAST) as sb:
        r = sb.run(f"open({path!r}, 'w').write('x')")
        assert r.status == "error" and ("Read-only file system" in r.stderr or "No such file" in r.stderr
                                        or "Permission denied" in r.stderr)
        _check_recovers(sb)
    assert not os.path.exists(REPO / "pwned")


def test_no_network_loopback_or_outside():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    with Sandbox(FAST) as sb:
        r = sb.run(f"import socket\ns = socket.socket(); s.settimeout(3)\ns.connect(('127.0.0.1', {port}))")
        assert r.status == "error" and "ConnectionRefusedError" in r.stderr
        # TEST-NET-1 (RFC 5737) is never routed; inside the sandbox there is no route at all.
        r = sb.run("import socket\ns = socket.socket(); s.settimeout(3)\ns.connect(('192.0.2.1', 80))")
        assert r.status == "error" and "Network is unreachable" in r.stderr and r.time < 1.0
        r = sb.run("import socket; socket.getaddrinfo('example.com', 80)")
        assert r.status == "error" and "gaierror" in r.stderr
        _check_recovers(sb)
    with pytest.raises(BlockingIOError):
        server.accept()  # the host's listener never saw a connection
    server.close()


HOSTILE = {  # name: (code, status, whether the interpreter and its variables survive)
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "timeout", True),
    "infinite loop": ("while True:\n    try:\n        pass\n    except Exception:\n        pass", "timeout", True),
    "sleep": ("import time; time.sleep(60)", "timeout", True),
    "stuck in C": ("sum(range(10**12))", "timeout", False),  # no bytecode boundary: killed
    "segfault": ("import ctypes; ctypes.string_at(0)", "crashed", False),
    "kill own group": ("import os, signal; os.killpg(0, signal.SIGKILL)", "crashed", False),
    "exit": ("import os; os._exit(0)", "crashed", False),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_killers_are_contained_and_the_next_call_works(name):
    code, status, survives = HOSTILE[name]
    with Sandbox(FAST) as sb:
        sb.run("x = 1")
        t0 = time.perf_counter()
        r = sb.run(code)
        assert r.status == status and r.state_lost != survives and time.perf_counter() - t0 < FAST.timeout + 3
        if name == "segfault":
            assert "SIGSEGV" in r.stderr
        if status == "timeout":
            assert "limit" in r.stderr
        if survives:
            assert sb.run("print(x)").stdout == "1\n"
            assert sb.run("import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))").stdout == "2\n"
        else:
            assert "NameError" in sb.run("x").stderr  # a fresh interpreter
        _check_recovers(sb)


def test_memory_bomb_is_an_error_and_keeps_state():
    with Sandbox(FAST) as sb:
        sb.run("x = 1")
        for code in ("b = bytearray(4 << 30)", "l = [0] * 10**9", "import numpy as np; a = np.ones(10**9)"):
            r = sb.run(code)
            assert r.status == "error" and "MemoryError" in r.stderr and not r.state_lost, code
        assert sb.run("print(x)").stdout == "1\n"


def test_huge_output_is_capped():
    with Sandbox(FAST) as sb:
        r = sb.run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))")
        assert r.truncated and len(r.stdout) < FAST.max_output_bytes + 100 and "bytes omitted" in r.stdout
        assert r.status == "error" and "File too large" in r.stderr  # RLIMIT_FSIZE stops it at 16 MB
        r = sb.run("print('a' * 100000 + 'END')")
        assert r.ok and r.truncated and r.stdout.endswith("END\n") and r.stdout.startswith("aaa")
        _check_recovers(sb)


def test_killing_the_parent_is_refused():
    with Sandbox(FAST) as sb:
        r = sb.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
        assert r.status == "error" and "PermissionError" in r.stderr
        r = sb.run("import os; print(os.getppid(), os.getpid(), len([p for p in os.listdir('/proc') if p.isdigit()]))")
        assert r.stdout == "1 2 2\n"  # its own PID namespace: bwrap's init and itself, nothing else
        _check_recovers(sb)


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("THINKGYM_SECRET", "hunter2")
    with Sandbox(FAST) as sb:
        r = sb.run("import os; print(sorted(os.environ))")
        assert set(eval(r.stdout)) <= set(sbx._SANDBOX_ENV) | {"PWD"}
        r = sb.run("print(open('/proc/1/environ').read())")
        assert "hunter2" not in r.stdout
        r = sb.run("import os; print(os.getuid() != 0, os.geteuid() != 0)")
        assert r.stdout == "True True\n"


def test_background_processes_do_not_survive_the_call():
    with Sandbox(FAST) as sb:
        r = sb.run("import subprocess, os\np = subprocess.Popen(['sleep', '60'])\n"
                   "if os.fork() == 0:\n    os.setsid(); import time; time.sleep(60)\nprint('spawned')")
        assert r.ok and r.stdout == "spawned\n"
        r = sb.run("import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
        assert r.stdout == "[1, 2]\n"
        sb.run("import subprocess; subprocess.Popen(['sleep', '60']); x = 5")
        tree = psutil.Process(sb._worker.proc.pid).children(recursive=True)
        assert len(tree) == 2  # bwrap's init inside the namespace, and the interpreter
    # ... and nothing outlives the episode: close() returns once all of it is gone
    assert not [p for p in tree if p.is_running()]
    assert not [p for p in sandbox_uids() if p.name() == "sleep"]


def test_a_forked_copy_does_not_kill_the_parents_workers():
    with Sandbox() as sb:
        sb.run("x = 11")
        pid = os.fork()
        if pid == 0:  # the child drops its copies (as a forked vector-env worker would) and exits
            sb.close()
            sbx.shutdown_pools()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        r = sb.run("print(x)")
        assert r.stdout == "11\n" and not r.state_lost


def test_refuses_without_namespaces_unless_unsafe(monkeypatch):
    monkeypatch.setattr(sbx, "namespaces_available", lambda: (False, "pretend bwrap is missing"))
    with pytest.raises(SandboxUnavailable, match="pretend bwrap is missing"):
        Sandbox(SandboxConfig(timeout=2.5, pool_size=0)).run("print(1)")
    with pytest.warns(RuntimeWarning, match="UNSAFE"):
        with Sandbox(SandboxConfig(timeout=2.5, pool_size=0, unsafe=True)) as sb:
            r = sb.run("import os\nx = 3\nprint(x, 'THINKGYM' in ''.join(os.environ))")
            assert r.ok and r.stdout == "3 False\n" and sb.run("print(x * 2)").stdout == "6\n"
            assert not sb.sandboxed


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="timeout"):
        SandboxConfig(timeout=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxConfig(max_processes=1)
    with pytest.raises(ValueError, match="preload"):
        SandboxConfig(preload="numpy")
    assert SandboxConfig(preload=["numpy"]) == SandboxConfig(preload=("numpy",))


def test_no_stray_process_after_the_corpus():
    sbx.shutdown_pools()  # idle pre-started workers are the only legitimate survivors
    deadline = time.time() + 5
    while sandbox_uids() and time.time() < deadline:
        time.sleep(0.05)
    assert sandbox_uids() == []


ESCAPES = {  # memory that RLIMIT_AS does not count, and namespaces of the code's own: each must fail
    "memfd": "import os\nfds = [os.memfd_create('x') for _ in range(100)]",
    "SysV shm": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "if libc.shmget(0, 15 << 20, 0o1600) < 0:\n    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))",
    "unshare -rm + tmpfs": "import subprocess\nsubprocess.run(['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=12g none /tmp && df -m /tmp'],"
                           " check=True)",
    "unshare(CLONE_NEWUSER)": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                              "if libc.unshare(0x10000000) < 0:\n    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_memory_outside_the_address_space_and_new_namespaces_are_denied(name):
    """Issue 34: 100 x 15 MB memfds held 1.5 GB past a 1 GiB cap, and `unshare -rm` mounted a 12 GB tmpfs."""
    with Sandbox(FAST) as sb:
        sb.run("x = 1")
        r = sb.run(ESCAPES[name])
        assert r.status == "error" and not r.state_lost, r
        assert "Operation not permitted" in r.stderr, r.stderr
        assert sb.run("print(x)").stdout == "1\n"
        assert sb.run("import os; print(os.getuid() != 0)").stdout == "True\n"
        _check_recovers(sb)


def test_forged_replies_are_ignored():
    """The code shares the worker's process: it can call the worker's `send`, but a reply without
    this call's nonce is dropped and the output is read by the host, not taken from the reply."""
    with Sandbox(FAST) as sb:
        forged = "{'status': 'ok', 'stdout': 'FORGED', 'stderr': '', 'traceback': '', 'truncated': False}"
        r = sb.run(f"import sys\nsys.modules['__main__'].send({forged})\nprint('real')\n1 / 0")
        assert r.status == "error" and r.stdout == "real\n" and "ZeroDivisionError" in r.stderr and not r.state_lost
        # With the nonce stolen from the worker's frame it can only speak for its own call, not its output ...
        steal = ("import sys\nreq = sys._getframe(1).f_back.f_locals['req']\nprint('real', flush=True)\n"
                 f"sys.modules['__main__'].send({{**{forged}, 'nonce': req['nonce']}})")
        r = sb.run(steal)
        assert r.ok and r.stdout == "real\n"
        # ... and the worker's own, now stale, reply to that call does not answer the next one.
        r = sb.run("print(6 * 7)")
        assert r.ok and r.stdout == "42\n"
        _check_recovers(sb)


@pytest.mark.parametrize("switch_off", ["sys.modules['__main__'].reap = lambda: None",
                                        "sys.modules['__main__'].cfg['pidns'] = False"])
def test_background_processes_die_even_when_the_code_switches_off_reaping(switch_off):
    with Sandbox(FAST) as sb:
        r = sb.run(f"import subprocess, sys\n{switch_off}\np = subprocess.Popen(['sleep', '60'])\nprint('spawned')")
        assert r.ok and r.stdout == "spawned\n"
        r = sb.run("import os\nprint([p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', '2')"
                   " and open(f'/proc/{p}/stat').read().split()[2] != 'Z'])")
        assert r.stdout == "[]\n"  # killed by the host (a zombie may wait for the disabled reaping)
        assert not [p for p in sandbox_uids() if p.name() == "sleep" and p.status() != psutil.STATUS_ZOMBIE]
