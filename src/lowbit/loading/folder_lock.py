"""Work and temporary folders beside an output folder, and the lock files that say who owns them.

A save or a calibration run that writes ``OUT`` first takes a :class:`Claim`: a token unique to it (its process id
and 8 random hex digits) and a lock file ``.OUT.lock-<token>`` naming its holder (host name, boot id, PID
namespace, process id and the process's start time); a holder that stops on purpose but keeps its folders for
a later run (Ctrl-C during calibration) marks the lock as left. Its folders beside ``OUT`` carry the same token
(``.OUT.tmp-<token>``, ``.OUT.old-<token>``, ``.OUT.calib-<token>``); the lock file goes last.

A folder is removed by another process only when it is *provably abandoned*: its lock names this host, this
boot and this PID namespace, and its process is gone or is another process that reused the id (another start
time). A lock from another machine, container or namespace, an unreadable lock or no lock at all proves nothing,
and the folder is kept. Where ``/proc`` is missing the start time is unknown and a dead process id decides.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lowbit.errors import SaveError

SWAP_WAIT_S = 120.0  # how long a save waits for another save of the same output to finish its renames
_MAX_STEM = 120  # bytes of the output's name kept in the names of its side folders (NAME_MAX is 255)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``), None where unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def holder() -> dict:
    """Who this process is, as a lock file records it."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns,
            "pid": os.getpid(), "start": start_time(os.getpid())}


def abandoned(lock: Path) -> bool:
    """Whether the holder of ``lock`` is provably gone (see the module's docstring)."""
    try:
        if not lock.is_file() or lock.is_symlink() or lock.stat().st_size > 4096:
            return False
        info = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or isinstance(info.get("pid"), bool):
        return False
    if info.get("left") is True:
        return True  # its holder stopped and left the folders to be resumed or removed
    me = holder()
    if any(info.get(k) != me[k] for k in ("host", "boot", "pidns")):
        return False
    pid = info["pid"]
    if not alive(pid):
        return True
    now = start_time(pid)
    return now is not None and info.get("start") is not None and now != info["start"]


def stem(name: str) -> str:
    """The output's name as its side folders carry it: the name, or a hash of it where the name is too long to
    take a prefix and a suffix within the file system's 255-byte limit."""
    raw = os.fsencode(name)
    return name if len(raw) <= _MAX_STEM else "h" + hashlib.sha256(raw).hexdigest()[:24]


def side_name(out: Path, kind: str, token: str) -> Path:
    return out.parent / f".{stem(out.name)}.{kind}-{token}"


class Claim:
    """This process's token for folders beside ``out``, and its lock file (written on creation)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.lock = side_name(out, "lock", self.token)
        data = json.dumps(holder()).encode()
        try:
            fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise SaveError(f"cannot write in {str(out.parent)!r} ({e.strerror}); choose a writable output folder") from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def path(self, kind: str) -> Path:
        return side_name(self.out, kind, self.token)

    def release(self) -> None:
        """The claim's folders are gone: remove the lock file."""
        self.lock.unlink(missing_ok=True)

    def leave(self) -> None:
        """Stop holding the folders but keep them (an interrupted run, to be resumed): mark the lock as left."""
        tmp = self.lock.with_name(self.lock.name + ".left")
        tmp.write_text(json.dumps({**holder(), "left": True}))
        os.replace(tmp, self.lock)


_SIDE = re.compile(r"^\.(?P<stem>.+)\.(?P<kind>tmp|old|calib|lock)-(?P<token>\d+-[0-9a-f]{8})$")


def side_entries(out: Path) -> dict[str, dict[str, Path]]:
    """token → {kind: path} of the side folders and lock files of ``out`` in its parent."""
    found: dict[str, dict[str, Path]] = {}
    for entry in out.parent.iterdir():
        m = _SIDE.match(entry.name)
        if m and m.group("stem") == stem(out.name):
            found.setdefault(m.group("token"), {})[m.group("kind")] = entry
    return found


@contextlib.contextmanager
def swap_lock(out: Path, wait_s: float = SWAP_WAIT_S) -> Iterator[None]:
    """Hold ``.OUT.swap`` while renaming folders: two saves of one output take turns; a lock whose holder is
    provably gone is taken over."""
    lock = side_name(out, "swap", "lock")
    deadline = time.monotonic() + wait_s
    data = json.dumps(holder()).encode()
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            if abandoned(lock):
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise SaveError(f"another save of {str(out)!r} holds {str(lock)!r} for over {wait_s:.0f} s; expected "
                                "it to finish its renames; wait for it, or remove the file if no save is running") from None
            time.sleep(0.05)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
