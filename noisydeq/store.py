"""Every write of the package and every check on read: atomic files, digests, locks, modes.

The rules (``docs/architecture.md``, "Persistence"):

* **Atomic.** A file is written under a unique temporary name in its own directory
  (``.<name>.<pid>-<random>.tmp``, created with ``O_EXCL``), flushed, ``fsync``'ed, renamed
  over the target (``os.replace``) and the directory ``fsync``'ed: a reader sees the old
  file or the new one, never a half-written one, and two writers never share a temp file.
* **Append-only logs** (``--log-json``, :mod:`noisydeq.events`) are the one exception to
  atomic replacement: :func:`append_bytes` adds one whole line per ``write``.
* **Modes follow the umask.** Temporary files are created with mode ``0o666`` filtered by
  the process umask, as ``open()`` would (typically ``0644``).
* **Digests.** Every stored artefact carries a SHA-256 digest that is checked when it is
  read: JSON files embed theirs (``"sha256"``, over the canonical JSON of the rest), TOML
  files start with a ``# sha256 <hex>`` line (over the rest of the text), safetensors files
  hold it in their metadata (over the tensors' names, dtypes, shapes and bytes and the JSON
  metadata), and formats without room for one (CSV, Parquet, figures) are listed in a
  ``SHA256SUMS`` file next to them (``sha256sum -c SHA256SUMS`` checks them too). A failed
  check raises :class:`~noisydeq.errors.CorruptArtefact` naming the file.
* **Locks.** :class:`DirLock` is an advisory lock on a directory (``filelock``: ``flock`` on
  POSIX, ``msvcrt`` on Windows; the OS drops it when its holder dies, kill -9 included).
  A second writer waits and says so in one line.
* **Stale temporary files** (left by a killed writer) are removed by the next writer that
  holds the directory's lock (:func:`clean_stale_temps`), or, without a lock, once the
  process that made them is gone.
* **Run directories** are opened for writing in one step, :func:`open_for_writing`: refused
  writing nothing when they cannot be written or hold another run, then locked, checked
  again, cleaned of stale temporary files and unsealed (``SHA256SUMS`` dropped until the
  run writes it again).

Checkpoints are **one** ``.safetensors`` file: the tensors plus string metadata holding the
full resolved config (JSON), its hash, the package version and the digest; a human-readable
``.json`` sidecar with the same config sits next to it. Optimizer state is flattened: every
tensor goes into the safetensors file under ``optim/...`` and every other value into JSON
metadata, so a training run can be resumed bit-for-bit. Nothing here uses pickle, and
nothing imports torch until a checkpoint is handled.

Length (about 690 lines, over the package's ~400): one idea on purpose — every write and
every check on read in one module (docs/architecture.md, "Persistence"); atomic files,
digests, locks, stale temporary files and checkpoints share the temp-name and digest rules.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from noisydeq import __version__
from noisydeq.errors import CorruptArtefact, NoisyDEQError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

FORMAT = "noisydeq-checkpoint/2"
_META_KEY = "noisydeq"
_DIGEST_KEY = "noisydeq.sha256"
#: key of the digest embedded in a signed JSON object
DIGEST = "sha256"
#: first-line prefix of a signed text (TOML) file
TEXT_DIGEST = "# sha256 "
#: name of the digest list of the files in a directory that cannot embed one
MANIFEST = "SHA256SUMS"
#: name of the lock file a :class:`DirLock` keeps in its directory
LOCK_FILE = ".noisydeq.lock"
#: largest text file (config, preset, experiment, JSON) read; bigger is refused
MAX_TEXT_BYTES = 16 * 2**20
#: a temporary file whose writer cannot be identified is stale after this many seconds
STALE_AFTER_S = 24 * 3600.0


# --------------------------------------------------------------------- messages


def warn(message: str) -> None:
    """One warning line on stderr (above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"noisydeq: warning: {message}", file=sys.stderr)
    sys.stderr.flush()


#: kinds of optional cache entry this process could not write (said once each)
_NOT_CACHED: set[str] = set()


def not_cached(what: str, path: str | os.PathLike, err: OSError) -> None:
    """Say once per process and kind ``what`` (``"calibration"``, ``"programmed chips"``,
    ``"figures"``) that an optional cache entry could not be written — a full disk, a
    quota, a cache made read-only — naming the file and why: the run goes on (its results
    do not depend on the entry) and the next run computes it again. Was silent."""
    if what in _NOT_CACHED:
        return
    _NOT_CACHED.add(what)
    where = err.filename or path
    warn(f"{where}: {err.strerror or err}; {what} not cached (this run goes on; the next "
         "computes them again)")


# ------------------------------------------------------------------- atomic writes

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
# temp names of earlier versions (mkstemp's 8 random characters; plots' fixed names): only
# removed under a lock
_LEGACY_TEMP = re.compile(r"^\..+\.([a-z0-9_]{8}\.(tmp|png|svg|part)|tmp\.(png|svg))$")


def _temp_path(target: Path) -> Path:
    name = target.name[:180]
    return target.parent / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` atomically when the block ends.

    ``with atomic_open(p) as fh: fh.write(...)`` (or ``fig.savefig(fh, format=...)``).
    On any error the temporary file is removed and ``path`` is left as it was; an
    :class:`OSError` that names no file or only the temporary one (a full disk fails in
    ``write``/``fsync``/``close``, which name none) is raised again naming ``path``, so the
    one line the command line prints says which file could not be written.
    """
    p = Path(path)
    tmp = p
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(
            os, "O_BINARY", 0)
        while True:
            tmp = _temp_path(p)
            try:
                fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
                break
            except FileExistsError:  # pragma: no cover - 32 random bits collided
                continue
    except OSError as err:
        raise _naming(err, p, tmp) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, p, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)


def _naming(err: OSError, target: Path, tmp: Path) -> OSError:
    """``err`` naming ``target`` when it names no file or the temporary file ``tmp``
    (``OSError(errno, ...)`` keeps its subclass: ENOSPC, EACCES, EROFS ...)."""
    if err.errno is None or err.filename not in (None, str(tmp)):
        return err
    return OSError(err.errno, err.strerror or str(err), str(target))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (unique temp file, fsync, rename)."""
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_bytes(path: str | os.PathLike, data: bytes = b"") -> None:
    """Append ``data`` to ``path`` (created if missing, mode ``0o666 & ~umask``) in one
    ``write`` on an ``O_APPEND`` descriptor: the one write that is not atomic-replace, for
    logs that only grow (:mod:`noisydeq.events`). On a local file system concurrent
    appenders never interleave within one call's bytes. ``data=b""`` only checks that the
    file can be appended to. Raises :class:`OSError`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # pragma: no cover - no cheap liveness probe: rely on the age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def stale_temp(path: str | os.PathLike, now: float | None = None) -> bool | None:
    """Whether ``path`` is a temporary file (:func:`atomic_open`'s name) whose writer is gone
    — its process has ended, or it is older than :data:`STALE_AFTER_S` — (True), one a live
    process is writing (False); None when its name is no temporary file's."""
    p = Path(path)
    m = _TEMP.match(p.name)
    if m is None:
        return None
    now = time.time() if now is None else now
    try:
        return not _pid_alive(int(m["pid"])) or now - p.stat().st_mtime > STALE_AFTER_S
    except OSError:  # gone meanwhile: its writer renamed or removed it
        return False


def clean_stale_temps(directory: str | os.PathLike, *, locked: bool = False) -> int:
    """Remove temporary files killed writers left in ``directory``; returns how many.

    ``locked``: the caller holds the directory's lock, so no other writer is active there
    and every temporary file is stale. Otherwise only those whose process is gone (or that
    are older than a day) are removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return 0
    removed = 0
    now = time.time()
    for f in d.iterdir():
        temp = stale_temp(f, now)
        if temp is None and not (locked and _LEGACY_TEMP.match(f.name)):
            continue
        try:
            if (locked or temp) and f.is_file():
                f.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def being_written(path: str | os.PathLike) -> bool:
    """Whether a live process is writing ``path`` now: a temporary file of it (see
    :func:`atomic_open`) whose writer is alive lies next to it. Lock-free entries (one
    atomic file) are skipped by ``noisydeq cache prune`` while one is."""
    p = Path(path)
    try:
        names = [f.name for f in p.parent.iterdir()]
    except OSError:
        return False
    for name in names:
        m = _TEMP.match(name)
        if m is not None and m["name"] == p.name[:180] and _pid_alive(int(m["pid"])):
            return True
    return False


def check_out_dir(out: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, leaving nothing behind, an output directory that names a file, lies below
    one or cannot be created or written.

    Writing is tried, not predicted (``os.access`` says yes to root on a directory no one
    can write into, e.g. ``/proc`` or ``/sys``), in ``out`` or its nearest existing parent:
    an unnamed temporary file (``O_TMPFILE``: no name, the directory unchanged), or where
    the file system has none, a temporary directory removed at once."""
    out = Path(out)
    for parent in (out, *out.parents):
        if not parent.exists():
            continue
        if not parent.is_dir():
            where = "is a file" if parent == out else f"lies below the file {parent}"
            raise NoisyDEQError(f"{flag} {out}: {where}, not a directory")
        try:
            try_writing(parent)
        except OSError as err:
            raise NoisyDEQError(f"{flag} {out}: cannot write in {parent} "
                                f"({err.strerror or err})") from None
        return


def try_writing(directory: Path) -> None:
    """Create a file in ``directory`` and let it go (OSError when that fails)."""
    unnamed = getattr(os, "O_TMPFILE", 0)
    if unnamed:
        try:
            os.close(os.open(directory, unnamed | os.O_WRONLY, 0o600))
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    probe = _temp_path(directory / "write-probe")  # no O_TMPFILE here: a named one
    probe.mkdir()
    probe.rmdir()


def make_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``mkdir -p path``; failure is one line naming ``what``."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NoisyDEQError(f"{what} {p}: cannot create it ({err.strerror or err})") from None
    return p


# ------------------------------------------------------------------ reading text


def read_bytes(path: str | os.PathLike, what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of ``path``; a missing, unreadable or oversized file is one clear error."""
    p = Path(path)
    try:
        if not p.exists():
            raise NoisyDEQError(f"{what} not found: {p}")
        if not p.is_file():
            raise NoisyDEQError(f"{what} {p} is not a file")
        size = p.stat().st_size
        if limit is not None and size > limit:
            raise NoisyDEQError(
                f"{what} {p} is {size / 2**20:.1f} MiB; at most {limit / 2**20:.0f} MiB is read"
            )
        return p.read_bytes()
    except OSError as err:
        raise NoisyDEQError(f"{what} {p}: cannot read it ({err.strerror or err})") from None


def read_text(path: str | os.PathLike, what: str = "file",
              limit: int | None = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of ``path``; binary or non-UTF-8 content is one clear error."""
    data = read_bytes(path, what, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NoisyDEQError(
            f"{what} {path} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})"
        ) from None
    if "\x00" in text:
        raise NoisyDEQError(f"{what} {path} is binary, not text (it holds NUL bytes)")
    return text


# ----------------------------------------------------------------------- digests


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 of ``data`` (text is UTF-8 encoded) as hex."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in chunks); SHA-256 unless ``algorithm`` says."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_constant(name: str) -> float:
    """``json.loads(parse_constant=...)``: Infinity / -Infinity / NaN as floats."""
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def dumps_signed(obj: Mapping[str, Any], indent: int | None = None) -> str:
    """JSON text of the object ``obj`` with its digest embedded under ``"sha256"``."""
    body = {k: v for k, v in obj.items() if k != DIGEST}
    body[DIGEST] = sha256_hex(_canonical(body))
    return json.dumps(body, sort_keys=True, indent=indent, allow_nan=True) + "\n"


def loads_signed(text: str, path: str | os.PathLike) -> dict[str, Any]:
    """Parse a file written by :func:`dumps_signed` and check its digest; the text must be
    exactly as written, so any change to the file is caught."""
    try:
        data = json.loads(text, parse_constant=parse_constant)
    except (ValueError, RecursionError):
        raise CorruptArtefact(path, "is not valid JSON (truncated or damaged)") from None
    if not isinstance(data, dict):
        raise CorruptArtefact(path, "is not a JSON object")
    digest = data.pop(DIGEST, None)
    if not isinstance(digest, str):
        raise CorruptArtefact(path, "carries no digest (not written by this noisydeq)")
    if sha256_hex(_canonical(data)) != digest:
        raise CorruptArtefact(path, "does not match its SHA-256 digest (changed or damaged)")
    # whitespace, a lost newline: the text must be one of the two layouts written — the
    # compact one first (cells, calibration entries: the C encoder), the indented one
    # (config sidecars, meta: Python's pure-Python encoder, ~10x slower) only when it is not
    if text != dumps_signed(data) and text != dumps_signed(data, 2):
        raise CorruptArtefact(path, "was changed (not as written, though its values match)")
    return data


def read_signed_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """Read and check a signed JSON file (any failure is a :class:`CorruptArtefact`)."""
    try:
        text = read_text(path, what)
    except NoisyDEQError as err:
        if not Path(path).exists():
            raise
        reason = str(err).split(str(path), 1)[-1].strip(" :")  # "is not UTF-8 text (...)"
        raise CorruptArtefact(path, reason) from None
    return loads_signed(text, path)


def write_signed_json(path: str | os.PathLike, obj: Mapping[str, Any],
                      indent: int | None = None) -> Path:
    """Write ``obj`` as signed JSON, atomically."""
    return atomic_write_text(path, dumps_signed(obj, indent))


def sign_text(text: str) -> str:
    """``text`` prefixed by its digest line (for TOML: a comment)."""
    return f"{TEXT_DIGEST}{sha256_hex(text)}\n{text}"


def verify_text(text: str, path: str | os.PathLike) -> str:
    """The body of a text written by :func:`sign_text`, after checking its digest."""
    head, _, body = text.partition("\n")
    if not head.startswith(TEXT_DIGEST):
        raise CorruptArtefact(path, "carries no digest line (not written by this noisydeq)")
    if head[len(TEXT_DIGEST):].strip() != sha256_hex(body):
        raise CorruptArtefact(path, "does not match its SHA-256 digest (changed or damaged)")
    return body


def write_manifest(directory: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Path:
    """Write ``directory/SHA256SUMS`` (``sha256sum`` format) for ``files`` inside it; the
    path returned is ``directory``'s as given (relative stays relative, as the commands
    print it next to the files it lists)."""
    d = Path(directory).resolve()
    rels = sorted({Path(f).resolve().relative_to(d).as_posix() for f in files})
    atomic_write_text(d / MANIFEST, "".join(f"{file_digest(d / r)}  {r}\n" for r in rels))
    return Path(directory) / MANIFEST


def remove_manifest(directory: str | os.PathLike) -> None:
    """Drop ``directory/SHA256SUMS`` (before the files it lists are rewritten)."""
    (Path(directory) / MANIFEST).unlink(missing_ok=True)


def remove_file(path: str | os.PathLike) -> bool:
    """Delete the regular file ``path`` (never through a link: a link is unlinked, not its
    target); True when it was there. The deletions of stored files go through here: the
    caller holds what guards the file (its directory's lock, or the check that no live
    process writes it). Raises :class:`OSError` when it cannot be deleted."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _manifest_entries(manifest: Path) -> dict[str, str]:
    """``{name: digest}`` of a ``SHA256SUMS`` file, which must be exactly as written."""
    if not manifest.is_file():
        raise CorruptArtefact(manifest, "is missing (its run did not finish writing; run the "
                                        "command again)")
    text = read_text(manifest, MANIFEST)
    entries: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or name in entries:
            raise CorruptArtefact(manifest, "is not a SHA256SUMS list (damaged)")
        entries[name] = digest
    if text != "".join(f"{entries[n]}  {n}\n" for n in sorted(entries)):
        raise CorruptArtefact(manifest, "was changed (not as written)")
    return entries


def verify_listed(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> None:
    """Check ``path`` against the ``SHA256SUMS`` of ``directory`` (default: its own)."""
    p = Path(path)
    d = Path(directory) if directory is not None else p.parent
    entries = _manifest_entries(d / MANIFEST)
    rel = p.resolve().relative_to(d.resolve()).as_posix()
    if rel not in entries:
        raise CorruptArtefact(p, f"is not listed in {d / MANIFEST}")
    if not p.is_file() or file_digest(p) != entries[rel]:
        raise CorruptArtefact(p, f"does not match its digest in {d / MANIFEST} (changed or "
                                 "damaged)")


def verify_manifest(directory: str | os.PathLike) -> list[str]:
    """Check every file ``directory/SHA256SUMS`` lists (as ``sha256sum -c`` does); returns
    their names."""
    d = Path(directory)
    names = list(_manifest_entries(d / MANIFEST))
    if not names:
        raise CorruptArtefact(d / MANIFEST, "lists no file (damaged)")
    for name in names:
        verify_listed(d / name, d)
    return names


# ------------------------------------------------------------------------- locks


class DirLock:
    """Advisory lock on a directory (``<dir>/.noisydeq.lock``), held inside ``with``.

    Another process holding it makes this one wait, after one line saying so. The lock is
    released by the OS when its holder dies (kill -9 included), so it never goes stale.
    Not re-entrant across instances: one holder per directory and process.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self._lock: Any = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> DirLock:
        import filelock

        make_dir(self.directory, self.what)
        lock = filelock.FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            warn(f"another noisydeq process is writing {self.what} {self.directory}; waiting "
                 f"for it to finish (lock {self.path})")
            lock.acquire()
        self._lock = lock
        return self

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it, without waiting (True), else False; the
        directory must exist (nothing is created)."""
        import filelock

        if not self.directory.is_dir():
            return False
        lock = filelock.FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


#: errno of a directory this process cannot write in: a read-only mount, no permission
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def reading_lock(directory: str | os.PathLike, what: str = "directory") -> DirLock | None:
    """The :class:`DirLock` of an existing ``directory`` that a reader holds while it reads
    (a model entry of the cache: a concurrent ``noisydeq cache clear`` skips it) — the
    caller releases it —, or None when the lock file cannot be made because the directory
    is read-only to this process (:data:`NOT_WRITABLE`: a read-only mount, no write
    permission). A cache that holds what a command reads is then served without the lock:
    the reader writes nothing there, and what it reads is digest-checked, so an entry
    another user clears during the read is a miss, never other data."""
    lock = DirLock(directory, what)
    try:
        return lock.acquire()
    except OSError as err:
        if err.errno in NOT_WRITABLE:
            return None
        raise


_T = TypeVar("_T")


@contextlib.contextmanager
def open_for_writing(lock: DirLock, check: Callable[[], _T], *,
                     temps: Iterable[str | os.PathLike] = (), unseal: bool = True
                     ) -> Iterator[tuple[_T, bool]]:
    """Open the run directory ``lock.directory`` for writing: the one opening of every
    resumable run store (sweep, attack, certify and study runs, a LyaDEQ experiment).

    1. Refuse, writing nothing, a directory that cannot be written (:func:`check_out_dir`:
       one line naming ``lock.what``, e.g. ``--out``) or that ``check()`` refuses (another
       run's, or a damaged signed file: :class:`CorruptArtefact` naming it).
    2. Take ``lock`` (creating the directory), waiting for another writer.
    3. ``check()`` again: another writer may have finished meanwhile.
    4. Remove the temporary files killed writers left in the directory and in ``temps``
       (:func:`clean_stale_temps`: the lock is held, so every one is stale).
    5. With ``unseal``, drop its ``SHA256SUMS`` (:func:`remove_manifest`): the files it
       lists may change from now on, so a run that stops before it seals again
       (:func:`write_manifest`) reads as partial, never as damaged.

    Yields what the second ``check()`` returned and whether this opening created the
    directory. The caller releases the lock (``lock.release()``); an error in steps 3 to 5
    or in the body releases it and removes the directory when this opening created it."""
    check_out_dir(lock.directory, lock.what)
    check()
    created = not lock.directory.exists()
    lock.acquire()
    try:
        checked = check()
        for d in (lock.directory, *temps):
            clean_stale_temps(d, locked=True)
        if unseal:
            remove_manifest(lock.directory)
        yield checked, created
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(lock.directory, ignore_errors=True)
        raise


# ------------------------------------------------------------------ JSON helpers


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for a config value (tuples → lists, paths → str, inf kept as float)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.device):
        return str(value)
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump(mode="python"))
    return value


def dumps_json(value: Any) -> str:
    """Canonical JSON (sorted keys; ``Infinity`` allowed, as Python's json reads it back)."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def hash_tensor(h: Any, t: Tensor, label: str = "") -> None:
    """Feed ``label``, shape, dtype and the bytes of ``t`` into the hashlib object ``h``
    (model weights, data and calibration inputs in cache keys)."""
    c = t.detach().to("cpu").contiguous()
    h.update(f"{label}{tuple(c.shape)}{c.dtype}".encode())
    h.update(c.numpy().tobytes())


def init_hash(model: Any) -> str:
    """Hash of a module's current weights (``state_dict``, sorted by name): identifies a
    model's initialisation in its training config and a trained model in cache keys."""
    return weights_hash(model.state_dict())


def weights_hash(tensors: Mapping[str, Tensor]) -> str:
    """:func:`init_hash` of a model whose ``state_dict`` is ``tensors``: a checkpoint's
    weights digest, read without building the model."""
    h = hashlib.blake2b(digest_size=10)
    for name, t in sorted(tensors.items()):
        hash_tensor(h, t, name)
    return h.hexdigest()


def config_hash(config: Any) -> str:
    """Stable 20-hex-digit hash of a config (canonical JSON, blake2b)."""
    return hashlib.blake2b(dumps_json(config).encode(), digest_size=10).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_diff(a: Any, b: Any, limit: int = 4) -> str:
    """The dotted keys whose values differ between two configs, e.g. ``train.epochs 3 → 5``."""
    fa, fb = _flatten(json.loads(dumps_json(a))), _flatten(json.loads(dumps_json(b)))
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))
    parts = [f"{k} {fa.get(k, '<absent>')!r} → {fb.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"… {len(keys) - limit} more")
    return ", ".join(parts) or "(no visible difference)"


# ---------------------------------------------------------------------- checkpoints


def _contiguous_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def tensors_digest(tensors: Mapping[str, Tensor], meta_json: str) -> str:
    """SHA-256 over ``meta_json`` and every tensor's name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tensors_blob(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> bytes:
    """Tensors + JSON-able ``meta`` as the bytes of one safetensors file with its digest
    (what :func:`save_tensors` writes; a Ray worker returns them to the driver)."""
    from safetensors.torch import save as st_save

    flat = _contiguous_cpu(tensors)
    meta_json = dumps_json({"format": FORMAT, "version": __version__, **meta})
    header = {_META_KEY: meta_json, _DIGEST_KEY: tensors_digest(flat, meta_json)}
    return st_save(flat, metadata=header)


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write tensors + JSON-able ``meta`` into one safetensors file with its digest, atomically."""
    return atomic_write_bytes(path, tensors_blob(tensors, meta))


def _checked_meta(tensors: Mapping[str, Tensor], header: Mapping[str, str],
                  p: Path) -> dict[str, Any]:
    """The noisydeq metadata of a safetensors header, its format and digest checked."""
    meta_json = header.get(_META_KEY)
    try:
        meta = json.loads(meta_json, parse_constant=parse_constant)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):
        raise CorruptArtefact(p, "carries no noisydeq metadata") from None
    if not isinstance(meta, dict):
        raise CorruptArtefact(p, "carries malformed noisydeq metadata (not a JSON object)")
    if meta.get("format") != FORMAT:
        raise CorruptArtefact(p, f"has format {meta.get('format')!r}, expected {FORMAT}")
    if header.get(_DIGEST_KEY) != tensors_digest(tensors, meta_json):  # type: ignore[arg-type]
        raise CorruptArtefact(p, "does not match its SHA-256 digest (changed or damaged)")
    return meta


def read_tensors_blob(
    blob: bytes, what: str | os.PathLike = "checkpoint bytes"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of bytes made by :func:`tensors_blob`, checked like a file
    (:func:`load_tensors`); ``what`` names them in errors."""
    from safetensors.torch import load as st_load

    p = Path(what)
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
        tensors = st_load(blob)
    except (ValueError, RuntimeError, AttributeError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptArtefact(p, f"are not a readable safetensors file ({reason})") from None
    return tensors, _checked_meta(tensors, header, p)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`: (tensors on CPU, meta), digest checked.

    A missing file is a :class:`NoisyDEQError`; an unreadable, foreign or damaged one a
    :class:`CorruptArtefact` naming it.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise NoisyDEQError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptArtefact(p, f"is not a readable safetensors file ({reason})") from None
    return tensors, _checked_meta(tensors, header, p)


def check_config(meta: Mapping[str, Any], config: Any, path: str | os.PathLike) -> None:
    """Raise one line if a checkpoint's config hash differs from ``config``'s."""
    want = config_hash(config)
    if meta.get("config_hash") != want:
        raise NoisyDEQError(
            f"checkpoint {path} was made with a different config "
            f"(hash {meta.get('config_hash')} ≠ {want}: {config_diff(meta.get('config'), config)})"
        )


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    config: Any,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save model weights with their full resolved ``config`` and its hash.

    Writes ``path`` (safetensors; the authoritative copy of the config lives in its
    metadata) and ``path`` with suffix ``.json`` (the same config, hash and ``extra`` —
    metrics, history — for people and tools, signed).
    """
    return write_checkpoint_blob(path, checkpoint_blob(state_dict, config, extra))


def checkpoint_blob(
    state_dict: Mapping[str, Tensor], config: Any, extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of the checkpoint :func:`save_checkpoint` writes (a worker computes them,
    the driver writes them with :func:`write_checkpoint_blob`)."""
    cfg = json.loads(dumps_json(config))
    meta = {"config": cfg, "config_hash": config_hash(cfg), "extra": to_jsonable(extra or {})}
    return tensors_blob(state_dict, meta)


def write_checkpoint_blob(path: str | os.PathLike, blob: bytes) -> Path:
    """Write checkpoint bytes (:func:`checkpoint_blob`) to ``path`` and its signed ``.json``
    sidecar, atomically, after checking their digest and config hash (bytes that fail are
    a :class:`CorruptArtefact`; nothing is written)."""
    p = Path(path)
    _, meta = read_tensors_blob(blob, f"checkpoint bytes for {p}")
    if meta.get("config_hash") != config_hash(meta.get("config")):
        raise CorruptArtefact(Path(f"checkpoint bytes for {p}"), "carry a wrong config hash")
    atomic_write_bytes(p, blob)
    write_signed_json(p.with_suffix(".json"), _sidecar(p, meta), indent=2)
    return p


def _sidecar(p: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``.json`` sidecar of the checkpoint ``p`` whose checked metadata is ``meta``."""
    return {"format": FORMAT, "version": meta.get("version", __version__), "weights": p.name,
            **{k: meta[k] for k in ("config", "config_hash", "extra")}}


def mend_sidecar(path: str | os.PathLike, meta: Mapping[str, Any]) -> str | None:
    """Check the signed ``.json`` sidecar of the checkpoint ``path`` (``meta``: its metadata,
    as :func:`load_checkpoint` checked it) and write it again from ``meta`` — the
    authoritative copy — when it is missing, damaged or says something else. Returns the
    one line to warn with (naming the sidecar), or ``None`` when it was sound. A sidecar
    that cannot be written (a read-only cache) is said so; nothing is raised."""
    p = Path(path)
    side = p.with_suffix(".json")
    want = _sidecar(p, meta)
    if not side.is_file():
        reason = "is missing"
    else:
        try:
            have = read_signed_json(side, "checkpoint sidecar")
        except CorruptArtefact as err:
            reason = err.reason
        else:
            if dumps_json(have) == dumps_json(want):
                return None
            reason = f"does not match {p.name} ({config_diff(have, want)})"
    try:
        write_signed_json(side, want, indent=2)
    except OSError as err:
        return f"{side}: {reason}; could not write it again ({err.strerror or err})"
    return f"{side}: {reason}; written again from {p.name}"


def load_checkpoint(
    path: str | os.PathLike, config: Any | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load weights (CPU) and metadata; with ``config``, refuse a checkpoint of another config."""
    tensors, meta = load_tensors(path)
    if config is not None:
        check_config(meta, config, path)
    return tensors, meta


def load_into(model: torch.nn.Module, tensors: Mapping[str, Tensor], path: Any = "") -> None:
    """``model.load_state_dict`` with a one-line error for mismatched keys or shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        raise NoisyDEQError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]})"
        )
    model.load_state_dict(dict(tensors))


# ------------------------------------------------------------------- optimizer state


def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON (no pickle needed).

    Tensors go under ``optim/state/<param>/<key>``; non-tensor per-parameter entries and the
    param groups go into the JSON part.
    """
    from torch import Tensor

    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/state/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state["param_groups"]
    ]
    tuple_keys = sorted({k for g in state["param_groups"] for k, v in g.items()
                         if isinstance(v, tuple)})
    return tensors, {"scalars": scalars, "param_groups": groups, "tuple_keys": tuple_keys}


def unflatten_optimizer(tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/state/"):
            continue
        _, _, pid, key = name.split("/", 3)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    tuple_keys = set(info.get("tuple_keys", []))
    groups = [
        {k: (tuple(v) if k in tuple_keys else v) for k, v in g.items()}
        for g in info["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
