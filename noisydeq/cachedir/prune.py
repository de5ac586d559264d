"""Deleting cache entries without hurting a run that uses them.

A model entry is a directory that its writer and its loader hold locked
(:class:`noisydeq.store.DirLock`, ``train_model``): its files are deleted only under its
lock, taken without waiting, and it is skipped while another process holds it. The
directory and its lock file stay (an empty husk, which :func:`inventory.scan` does not
list): a process waiting for the lock then gets it on the same file, finds no model and
trains it again. Unlinking the lock file would let that process lock the unlinked file
while a third one locks a new file of the name (two holders), and removing the directory
would end its wait in a ``FileNotFoundError`` — filelock 3.12, which the package allows,
neither checks the one nor recreates the other. Calibration and chip entries are single
files replaced atomically and take no lock: one is skipped while a live process writes it
(:func:`noisydeq.store.being_written`); a process that has one open keeps reading it after
it is unlinked (POSIX), and one that looks for it afterwards computes it again (a miss, as
for an entry never written). Figure entries and the code fingerprint's memo files are such
single files too. Only regular files inside the cache's kind directories are
unlinked (never through a link), after :func:`inventory.check_root`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from noisydeq import store
from noisydeq.cachedir.inventory import Entry, Inventory

DAY = 86400.0


@dataclass
class Outcome:
    """Entries removed (or, in a dry run, that would be) and skipped with the reason, and
    the temporary files of killed writers removed: (path, size)."""

    removed: list[Entry] = field(default_factory=list)
    skipped: list[tuple[Entry, str]] = field(default_factory=list)
    temps: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed) + sum(n for _, n in self.temps)


def select(inv: Inventory, kinds: tuple[str, ...] = (), stale: bool = False,
           older_than: float | None = None, now: float | None = None) -> list[Entry]:
    """The entries of ``kinds`` (all when empty) that are stale (``stale``) and last written
    more than ``older_than`` days ago (``None``: any age): both when both are given."""
    now = time.time() if now is None else now
    return [e for e in inv.entries
            if (not kinds or e.kind in kinds) and (not stale or e.status == "stale")
            and (older_than is None or now - e.mtime > older_than * DAY)]


def _in_use(entry: Entry) -> str:
    """Why ``entry`` cannot be deleted now (``""``: it can); a model's lock is taken and
    given back at once."""
    if entry.kind != "models":
        return "being written by another process" if store.being_written(entry.path) else ""
    lock = store.DirLock(entry.path, "model directory")
    if not lock.try_acquire():
        return "in use by another process (it holds the entry's lock)"
    lock.release()
    return ""


def _undeletable(entry: Entry) -> str:
    """Why this process cannot delete ``entry`` (``""``: it may), as the deletion would say
    it: its directory on a read-only file system, or not writable to this process — what a
    dry run reports for a read-only cache (it deletes nothing to find out)."""
    return _unwritable(entry.path if entry.kind == "models" else entry.path.parent)


def _unwritable(where: Path) -> str:
    """Why no file in directory ``where`` can be deleted by this process (``""``: it may)."""
    try:
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            return f"cannot be deleted ({os.strerror(errno.EROFS)})"
    except (OSError, AttributeError):  # no statvfs (Windows): the access check alone
        pass
    return "" if os.access(where, os.W_OK) else f"cannot be deleted ({os.strerror(errno.EACCES)})"


def _delete(entry: Entry) -> str:
    """Delete ``entry`` (a model's directory under its lock); why it was not, or ``""``."""
    if entry.kind != "models":
        why = _in_use(entry)
        if not why:
            store.remove_file(entry.path)
        return why
    lock = store.DirLock(entry.path, "model directory")
    if not lock.try_acquire():
        return "in use by another process (it holds the entry's lock)"
    try:
        names = {f.name for f in entry.path.iterdir()} - {store.LOCK_FILE}
        if names != {f.name for f in entry.files} - {store.LOCK_FILE}:
            return "changed since it was listed (written by another process)"
        for f in entry.files:
            if f.name != store.LOCK_FILE:  # the lock file and directory stay: see the module
                store.remove_file(f)
    finally:
        lock.release()
    return ""


def remove(entries: list[Entry], dry_run: bool = False, inv: Inventory | None = None,
           kinds: tuple[str, ...] = ()) -> Outcome:
    """Delete ``entries`` (see the module) and, with ``inv``, the temporary files killed
    writers left in the directories of ``kinds`` (all when empty; a live writer's are
    left alone: :func:`noisydeq.store.stale_temp` is asked again just before); ``dry_run``:
    delete nothing, say which would go and which would be skipped now."""
    out = Outcome()
    for kind, path, size, stale in inv.temps if inv is not None else ():
        if stale and (not kinds or kind in kinds) and store.stale_temp(path):
            try:
                if (not _unwritable(path.parent) if dry_run else store.remove_file(path)):
                    out.temps.append((path, size))
            except OSError:
                continue
    for entry in entries:
        try:
            why = (_undeletable(entry) or _in_use(entry)) if dry_run else _delete(entry)
        except OSError as err:
            why = f"cannot be deleted ({err.strerror or err})"
        if why:
            out.skipped.append((entry, why))
        else:
            out.removed.append(entry)
    return out
