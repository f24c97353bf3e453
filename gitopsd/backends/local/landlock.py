"""Landlock through its three system calls: ask the kernel's ABI, build a ruleset, and restrict a process to it.

The system-call half of training confinement (`confine` decides which paths get which access). Landlock needs
no privilege: any process may restrict itself, after `prctl(PR_SET_NO_NEW_PRIVS)`, and the restriction holds
for everything it executes afterwards. The local supervisor builds the ruleset itself (so every failure is
reported in its own words), and the training's child process, between fork and exec, makes just the two calls
that restrict it; the supervisor, its memory sampler and the virtualenv build stay unconfined.

Only the access rights the running ABI knows are handled: Landlock refuses a ruleset that names rights it does
not know, and rights it does not handle stay allowed. `LANDLOCK_ACCESS_FS_IOCTL_DEV` (ABI 5) is never handled,
so GPUs keep their ioctls. From ABI 6 on the training is also scoped: it cannot signal processes outside its
domain (the daemon, other runs) nor connect to abstract unix sockets they listen on. Landlock's own ptrace
rule (every ABI) keeps it out of `/proc/PID/environ`, `/proc/PID/mem` and `/proc/PID/fd` of those processes.

Standard library and `confine` only: the supervisor imports it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from gitopsd.backends.local.confine import Access, ConfinementError, Policy, Probe

# System call numbers: the same in the generic table (aarch64, riscv, ...) and on x86_64 and most others.
_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
_KNOWN_MACHINES = ("x86_64", "amd64", "aarch64", "arm64", "armv7l", "armv8l", "riscv64", "ppc64le", "s390x")
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5: never handled
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1}  # from ABI 3 on: bits 0..14 (IOCTL_DEV left out)
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
_WRITE = (
    _READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
_RIGHTS = {Access.LIST: FS_READ_DIR, Access.READ: _READ, Access.WRITE: _WRITE}


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def handled_fs(abi: int) -> int:
    """The file-system rights a ruleset handles on a kernel with Landlock ABI `abi`."""
    return _FS_BY_ABI.get(abi, (1 << 15) - 1) if abi >= 1 else 0


def rights(access: Access, abi: int, *, directory: bool) -> int:
    """The Landlock rights of one rule: those of `access` that the ABI handles, file rights only on a file."""
    allowed = _RIGHTS[access] & handled_fs(abi)
    return allowed if directory else allowed & _FILE_RIGHTS


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(libc: ctypes.CDLL, name: str) -> Callable[..., int]:
    call = libc.syscall
    call.restype = ctypes.c_long
    number = _SYSCALLS[name]
    return lambda *args: int(call(ctypes.c_long(number), *args))


def probe() -> Probe:
    """The Landlock ABI of the running kernel, or 0 with the reason it cannot be used."""
    system, machine = os.uname().sysname, os.uname().machine  # what platform.system() and .machine() say
    if system != "Linux":
        return Probe(abi=0, reason=f"Landlock is a Linux feature and this host runs {system}")
    if machine not in _KNOWN_MACHINES:
        return Probe(abi=0, reason=f"gitopsd does not know the Landlock system call numbers on {machine}")
    try:
        create = _syscall(_libc(), "create_ruleset")
    except (OSError, AttributeError) as exc:
        return Probe(abi=0, reason=f"the C library cannot make system calls: {exc}")
    abi = create(None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi >= 1:
        return Probe(abi=abi)
    code = ctypes.get_errno()
    reasons = {
        errno.ENOSYS: "this kernel has no Landlock (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK)",
        errno.EOPNOTSUPP: "Landlock is built into this kernel but not enabled (add landlock to the lsm= boot "
        "parameter or CONFIG_LSM)",
        errno.EPERM: "the Landlock system calls are blocked by a seccomp filter (under systemd, allow "
        "landlock_create_ruleset, landlock_add_rule and landlock_restrict_self in SystemCallFilter=)",
    }
    return Probe(abi=0, reason=reasons.get(code, f"landlock_create_ruleset failed: {os.strerror(code)}"))


def build_ruleset(policy: Policy, abi: int) -> tuple[int, list[str]]:
    """A ruleset file descriptor holding `policy`, and the rule paths skipped because they are gone.

    Each path is opened (O_PATH) and checked to still be where the policy saw it: a path that now leads
    elsewhere through a symlink is skipped rather than granted where it leads.
    """
    libc = _libc()
    attr = _RulesetAttr(handled_access_fs=handled_fs(abi))
    if policy.deny_tcp and abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    create = _syscall(libc, "create_ruleset")
    fd = create(ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if fd < 0:
        code = ctypes.get_errno()
        raise ConfinementError(f"cannot create a Landlock ruleset: {os.strerror(code)}")
    add = _syscall(libc, "add_rule")
    skipped: list[str] = []
    try:
        for rule in policy.rules:
            try:
                path_fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                skipped.append(rule.path)
                continue
            try:
                if os.readlink(f"/proc/self/fd/{path_fd}") != rule.path:
                    skipped.append(rule.path)
                    continue
                allowed = rights(rule.access, abi, directory=stat.S_ISDIR(os.fstat(path_fd).st_mode))
                if not allowed:
                    continue  # listing a file: nothing to grant
                beneath = _PathBeneathAttr(allowed_access=allowed, parent_fd=path_fd)
                if add(ctypes.c_int(fd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(beneath),
                       ctypes.c_uint32(0)) != 0:  # fmt: skip
                    code = ctypes.get_errno()
                    raise ConfinementError(f"cannot add the Landlock rule for {rule.path}: {os.strerror(code)}")
            finally:
                os.close(path_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, skipped


def _last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63


def restrictor(ruleset_fd: int) -> Callable[[], None]:
    """What the training's process calls between fork and exec: give up capabilities, then restrict itself.

    Capabilities go first (an empty bounding set and no ambient ones), so that a daemon run as root does not
    hand its training CAP_SYS_PTRACE, with which Landlock lets it read `/proc/PID/environ` of the daemon;
    without CAP_SETPCAP (any service account) there is nothing to drop. Then no new privileges, then the
    ruleset. Everything is looked up here, in the supervisor, so that the child only makes system calls. A
    failure is written to the child's stderr (the run's log) and raised, so the command is never executed.
    """
    libc = _libc()
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    restrict = _syscall(libc, "restrict_self")
    fd, no_flags = ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)
    zero, one = ctypes.c_ulong(0), ctypes.c_ulong(1)
    capabilities = [ctypes.c_ulong(cap) for cap in range(_last_capability() + 1)]

    def restrict_child() -> None:
        for cap in capabilities:
            if prctl(ctypes.c_int(PR_CAPBSET_DROP), cap, zero, zero, zero) != 0:
                break  # EPERM: no CAP_SETPCAP, so no capability worth dropping either
        prctl(ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), zero, zero, zero)
        if prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), one, zero, zero, zero) != 0:
            what = "prctl(PR_SET_NO_NEW_PRIVS)"
        elif restrict(fd, no_flags) != 0:
            what = "landlock_restrict_self"
        else:
            return
        message = f"[gitopsd local] {what} failed: {os.strerror(ctypes.get_errno())}; the command was not run\n"
        os.write(2, message.encode())
        raise ConfinementError(message.strip())

    return restrict_child
