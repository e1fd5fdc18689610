"""The output folder of a save: checked before any work, replaced atomically and durably, nothing else lost.

``check_output`` refuses what would lose data or fail late: an output that is the source, inside it or around it,
a non-empty folder without ``overwrite``, the current folder, a symbolic link, a name that is too long or not
UTF-8. ``swap`` renames the finished temporary folder into place (under the output's swap lock), moves every
entry of the old folder that lowbit does not write (notes, a README, a ``runs/`` folder) into the new one and
fsyncs the folders before and after the renames. ``clean_leftovers`` finishes or removes what saves that are
provably gone left behind (:mod:`lowbit.loading.folder_lock`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lowbit.errors import SaveError
from lowbit.loading.checkpoint import INDEX_NAME
from lowbit.loading.folder_lock import Claim, abandoned, side_entries, swap_lock
from lowbit.loading.tokenizer import TOKENIZER_FILES

WRITTEN = frozenset({"config.json", "generation_config.json", INDEX_NAME, *TOKENIZER_FILES})
NAME_MAX = 255


def written_by_lowbit(name: str) -> bool:
    """Whether a save writes (and so may replace or remove) the entry ``name`` of an output folder."""
    return name in WRITTEN or name.endswith(".safetensors")


def absolute(path: str | Path) -> Path:
    """``path`` made absolute without following symbolic links (``.`` becomes the current folder's name)."""
    return Path(os.path.abspath(os.fspath(path)))


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output(out: str | Path, overwrite: bool = False, src: str | Path | None = None) -> None:
    """Fail early (before any work) when ``out`` cannot take a saved model without losing data."""
    shown = repr(str(out))
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise SaveError(f"output {shown} is not a UTF-8 path; expected a name that can be written in config files "
                        "and loaded again; choose a name of UTF-8 characters") from None
    path = absolute(out)
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise SaveError(f"output name {path.name[:40]!r}… is {len(os.fsencode(path.name))} bytes; expected at most "
                        f"{NAME_MAX}; choose a shorter name")
    if Path(out).is_symlink():
        raise SaveError(f"output {shown} is a symbolic link to {os.readlink(out)!r}; expected a real folder path; "
                        "pass the link's target itself or another folder")
    real = os.path.realpath(path)
    if _inside(os.path.realpath(os.getcwd()), real):
        raise SaveError(f"output {shown} is the current folder or holds it; expected a folder beside it; "
                        "pass a named folder such as ./out")
    if src is not None:
        source = os.path.realpath(src)
        if _inside(real, source) or _inside(source, real):
            relation = "is" if real == source else "is inside" if _inside(real, source) else "holds"
            raise SaveError(f"output {shown} {relation} the source folder {str(src)!r}; expected a separate folder, "
                            "since writing it would replace or delete the source; choose another output")
    if path.exists() and not path.is_dir():
        raise SaveError(f"output {shown} is a file; expected a folder path; choose another output or remove the file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        what = "a model" if (path / "config.json").exists() else "other files"
        raise SaveError(f"output folder {shown} is not empty (it holds {what}); refusing to replace it; choose an "
                        "empty folder or pass overwrite=True (--overwrite), which replaces only the files lowbit "
                        "writes and keeps the others")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaveError(f"cannot create the output's parent {str(path.parent)!r} ({e.strerror}); "
                        "choose a writable output folder") from None
    if not os.access(path.parent, os.W_OK):
        raise SaveError(f"cannot write in {str(path.parent)!r} (permission denied); choose a writable output folder")


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file directly in ``folder``, then the folder itself."""
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fsync_path(entry)
    fsync_path(folder)


def merge_foreign(old: Path, out: Path) -> None:
    """Move the entries of ``old`` that lowbit does not write into ``out`` (where ``out`` lacks them)."""
    for entry in sorted(old.iterdir()):
        if not written_by_lowbit(entry.name) and not os.path.lexists(out / entry.name):
            os.replace(entry, out / entry.name)


def swap(tmp: Path, out: Path, claim: Claim) -> None:
    """Put the finished ``tmp`` in ``out``'s place: the old folder aside, the new one in, the old one's other
    entries moved over, the old one removed. Flushed before and after, so power loss keeps one model whole."""
    fsync_tree(tmp)
    old = claim.path("old")
    with swap_lock(out):
        had_old = out.exists()
        if had_old:
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_path(out.parent)
        if had_old:
            merge_foreign(old, out)
            fsync_path(out)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(out: Path) -> None:
    """Finish or remove what saves of ``out`` left when they died. A save killed between its renames left the old
    model as ``.OUT.old-<token>`` and no ``OUT``: it is put back; one killed after them still holds the old
    folder's other entries: they are moved into ``OUT``. Folders of live or unknown holders are kept."""
    for token, entries in sorted(side_entries(out).items()):
        lock = entries.get("lock")
        if lock is None or not abandoned(lock):
            continue
        with swap_lock(out):
            if "old" in entries and not out.exists():
                os.replace(entries["old"], out)
            elif "old" in entries:
                merge_foreign(entries["old"], out)
        for kind in ("old", "tmp"):
            if kind in entries and entries[kind].exists():
                shutil.rmtree(entries[kind], ignore_errors=True)
        if "calib" not in entries:  # a calibration run's work is resumed or removed by the next run
            lock.unlink(missing_ok=True)
