"""The sandbox's seccomp filter: system calls that would take memory or mounts past its limits fail.

RLIMIT_AS does not count memory held by a file: a `memfd_create` file, a SysV shared-memory segment
or a tmpfs mounted in a user namespace of the code's own (`unshare -rm`) outlive every mapping
and would let code hold gigabytes under a 1 GiB cap. The filter makes those calls fail with EPERM
(new namespaces of any kind, mounts, memfd, SysV shm, ptrace and cross-process memory access), so
the only memory the code can hold is its address space plus the fixed-size tmpfs dirs bwrap made.
It is built with libseccomp (through ctypes: its Python binding is not on PyPI under a stable
name) and handed to bwrap's `--seccomp FD`, which installs it just before the worker starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import lru_cache

_ALLOW = 0x7FFF0000  # SCMP_ACT_ALLOW
_CMP_MASKED_EQ = 7  # SCMP_CMP_MASKED_EQ: (arg & datum_a) == datum_b
DENIED = ("memfd_create", "memfd_secret", "unshare", "setns", "mount", "umount2", "pivot_root", "fsopen",
          "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "shmget", "ptrace",
          "process_vm_readv", "process_vm_writev")
# clone(2) may create namespaces through its flags; clone3 passes them in a struct a filter cannot
# read, so it fails with ENOSYS and the C library falls back to clone, whose flags are checked.
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


@lru_cache(maxsize=1)
def filter_program() -> bytes:
    """The compiled BPF program; raises OSError naming the problem when libseccomp is missing."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise OSError("libseccomp is not installed (`apt-get install libseccomp2`, or `make sysdeps`)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        raise OSError("libseccomp could not start a filter")
    try:
        def add(call: str, action: int, *conditions: _ArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(call.encode())
            if nr < 0:  # not a system call of this architecture (e.g. memfd_secret on older tables)
                return
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conditions), array)
            if rc < 0:
                raise OSError(-rc, f"libseccomp refused the rule for {call}: {os.strerror(-rc)}")

        for call in DENIED:
            add(call, _errno_action(errno.EPERM))
        add("clone3", _errno_action(errno.ENOSYS))
        for flag in _CLONE_NAMESPACES:
            add("clone", _errno_action(errno.EPERM), _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise OSError(-rc, f"libseccomp could not export the filter: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    finally:
        lib.seccomp_release(ctx)


def program_fd() -> int:
    """A readable fd holding the program, for `bwrap --seccomp FD` (the caller closes it)."""
    data = filter_program()
    r, w = os.pipe()
    try:
        os.write(w, data)  # a few hundred bytes: within a pipe's buffer
    finally:
        os.close(w)
    return r
