"""Is this file fit to be a ledger? The path checks ``start()`` makes (the directory, the
filesystem it is on, read from ``/proc/mounts``) and the facts it gives the one fitness
policy (``idemsend.ledger.judge``). Everything here but ``read_mounts`` is pure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..._errors import ConfigError
from .._fitness import Caution, Finding, StoreFacts

__all__ = [
    "MIN_VERSION",
    "NETWORK_FILESYSTEMS",
    "Mount",
    "check_directory",
    "mount_of",
    "network_refusal",
    "parse_mounts",
    "read_mounts",
    "store_facts",
]

#: The oldest SQLite the ledger runs on (``INSERT … ON CONFLICT DO UPDATE``: 3.24).
MIN_VERSION = (3, 24, 0)

#: Filesystems whose locks SQLite cannot rely on: two hosts (or two clients of one
#: server) can both hold the write lock, and two workers can then claim one key.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "ocfs2", "gfs2", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse",
    "davfs", "fuse.davfs2", "virtiofs", "vboxsf", "fuse.juicefs", "beegfs", "orangefs",
})


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/mounts``: where it is mounted, its filesystem type, its source."""

    point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # /proc/mounts writes a space as \040, a tab as \011, a newline as \012, a backslash as \134
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def parse_mounts(text: str) -> list[Mount]:
    """The mounts in ``/proc/mounts``'s text (lines it cannot read are skipped)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(_unescape(parts[1]), parts[2], _unescape(parts[0])))
    return mounts


def read_mounts(path: str = "/proc/mounts") -> list[Mount] | None:
    """The host's mounts, or ``None`` where there is no ``/proc/mounts`` (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_mounts(f.read())
    except OSError:
        return None


def mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) is on: the longest mount point it
    is under (the last one mounted there, when several are)."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        under = path == point or path.startswith(point if point == "/" else point + "/")
        if under and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def network_refusal(path: str, mount: Mount | None) -> str | None:
    """Why ``path`` must not hold a ledger (it is on a network filesystem), or ``None``."""
    if mount is None or mount.fstype.lower() not in NETWORK_FILESYSTEMS:
        return None
    return (
        f"the SQLite ledger file {path} is on a network filesystem ({mount.fstype} {mount.source} at {mount.point}):"
        " SQLite's file locks are not reliable there, so two workers can hold the write lock at once and both"
        " claim one key (a double send), and a crash can corrupt the file. Put the ledger on a local disk, use"
        " PostgresLedger or RedisLedger to share one ledger between hosts, or pass allow_network_fs=True to"
        " accept the risk"
    )


def check_directory(path: str) -> None:
    """``ConfigError`` when the ledger's directory is missing or not writable (SQLite makes
    the file and its ``-wal`` and ``-shm`` files there), or the file itself is read-only."""
    directory = os.path.dirname(path) or "."
    try:
        os.stat(directory)
    except PermissionError:
        raise ConfigError(
            f"the SQLite ledger's directory {directory} cannot be reached by this process (uid {os.getuid()}):"
            " permission denied on it or on a directory above it"
        ) from None
    except OSError:
        pass
    if not os.path.isdir(directory):
        raise ConfigError(
            f"the SQLite ledger's directory {directory} does not exist (ledger file {path}): create it first;"
            " the ledger does not make directories, so a typo in the path is not a new, empty ledger"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"the SQLite ledger's directory {directory} is not writable by this process (uid {os.getuid()}),"
            " or is on a read-only filesystem: SQLite needs to create the ledger file and its -wal and -shm"
            " files there"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"the SQLite ledger file {path} is not readable and writable by this process")


def store_facts(
    path: str, *, version: tuple[int, ...], journal_mode: str, synchronous: int, network: str | None,
) -> StoreFacts:
    """The facts ``judge`` rules on (pure). ``synchronous`` is ``PRAGMA synchronous``'s
    number (0 off, 1 normal, 2 full, 3 extra); ``network`` is ``network_refusal``'s text
    when the user accepted a network filesystem (``allow_network_fs``)."""
    where = f"file {path}"
    loses = []
    if synchronous == 0:
        loses.append(Finding(where, "has synchronous=OFF (an operating-system crash or a power loss can lose"
                                    " or corrupt committed records)"))
    elif synchronous == 1 and journal_mode == "wal":
        loses.append(Finding(where, "has synchronous=NORMAL (a power loss or an operating-system crash can lose"
                                    " the last commits; a process crash, SIGKILL included, loses nothing)"))
    cautions = []
    if journal_mode != "wal" and path != ":memory:":
        cautions.append(Caution("no_wal", (
            f"idemsend: the SQLite ledger {where} is in journal_mode={journal_mode}, not WAL (the filesystem may"
            " not support it): readers then wait for writers, and idemsend inspect or a get() can block workers."
        )))
    if network is not None:
        cautions.append(Caution("network_fs", f"idemsend: {network}. Continuing because allow_network_fs=True."))
    forgets = (Finding(where, "is in memory (:memory:)"),) if path == ":memory:" else ()
    return StoreFacts(
        store="the SQLite ledger",
        ledger="SQLiteLedger",
        too_old=(Finding(where, f"is opened by SQLite {'.'.join(map(str, version))}"),) if version < MIN_VERSION
        else (),
        needs="SQLite 3.24 or newer (the Python's sqlite3 module links it)",
        forgets=forgets,
        loses=tuple(loses),
        persist="use synchronous='full' (the default) in production",
        cautions=tuple(cautions),
    )
