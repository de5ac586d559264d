"""MNIST from the official IDX files: reader, checksum check, download, and ``mnist10k``.

Where the files are looked for, in order: the ``data_dir`` argument (CLI ``--data-dir``),
the environment variable ``NOISYDEQ_MNIST_DIR``, then ``platformdirs.user_data_dir("noisydeq")
/ "mnist"``. A directory that is named explicitly must exist. Files may be the official
gzip files (``*-ubyte.gz``, verified against the official MD5 sums below) or their
uncompressed form (``*-ubyte``, checked structurally: magic number, dimensions, length).

Download (``download``): ``True`` fetches every missing official file; ``False`` never touches
the network; ``None`` (default, overridable by ``NOISYDEQ_DOWNLOAD=0/1``) fetches only into a
directory that holds no MNIST file yet, so a directory with just the test set is used as it is.
Downloads go to a temporary file, are verified against the MD5 sum, then renamed into place.
The mirrors (``MIRRORS``) are tried in turn, each with a ``DOWNLOAD_TIMEOUT_S`` timeout; the
first file that none of them gives ends the download, and a load that then lacks its files is
one line naming the directory, the files expected and the last download error (offline: the
network error at once, or after the timeouts where connections hang).

``mnist10k`` — used when only the official *test* files (10,000 images) are present, or when
asked for by name: a seeded, class-stratified split of the test set into 8,000 training and
2,000 test images (:func:`noisydeq.tasks.base.stratified_split`, seed = task seed). ``mnist``
falls back to it with a notice when the training files are absent.

Pixels are scaled to [0, 1] and flattened to 784 features (paper Table 1: 784-unit input).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.store import atomic_open, file_digest
from noisydeq.tasks.base import Task, named_data_dir, stratified_split

ENV_DIR = "NOISYDEQ_MNIST_DIR"
ENV_DOWNLOAD = "NOISYDEQ_DOWNLOAD"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# MD5 sums of the official gzip files as distributed by Y. LeCun, C. Cortes and C. Burges
# (http://yann.lecun.com/exdb/mnist/); the same sums are listed in torchvision's
# ``torchvision.datasets.MNIST.resources`` and, for the test files, in ../shared/data/mnist/MD5SUMS.
OFFICIAL_MD5 = {
    TRAIN_IMAGES + ".gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS + ".gz": "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES + ".gz": "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS + ".gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Public mirrors of the official files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

N_OFFICIAL = {TRAIN_IMAGES: 60_000, TEST_IMAGES: 10_000}
MNIST10K_TEST = 2_000  # of the 10,000 official test images; the other 8,000 train
_IDX_DTYPES = {0x08: torch.uint8}  # MNIST only uses unsigned bytes
DOWNLOAD_TIMEOUT_S = 20.0


# ------------------------------------------------------------------------------ files


def default_dir() -> Path:
    """The per-user data directory used when neither ``data_dir`` nor the env var is set."""
    import platformdirs

    return Path(platformdirs.user_data_dir("noisydeq")) / "mnist"


def resolve_dir(data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """(directory, named_explicitly). An explicitly named directory must exist."""
    p = named_data_dir(data_dir, ENV_DIR, "MNIST")
    return (default_dir(), False) if p is None else (p, True)


def find_file(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` if present, else the uncompressed ``stem``, else ``None``."""
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def md5sum(path: Path) -> str:
    """MD5 hex digest of a file."""
    return file_digest(path, "md5")


def verify_checksum(path: Path) -> None:
    """Check an official ``.gz`` file against its MD5; uncompressed files are not checked here."""
    expected = OFFICIAL_MD5.get(path.name)
    if expected is None:
        return
    got = md5sum(path)
    if got != expected:
        raise NoisyDEQError(
            f"mnist: checksum mismatch for {path} (md5 {got}, expected {expected}); "
            "delete the file and download it again"
        )


def read_idx(path: str | os.PathLike) -> Tensor:
    """Parse an IDX file (gzip or raw) into a tensor.

    Format (LeCun et al.): two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension, then the data in C order.
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                raw = fh.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise NoisyDEQError(f"mnist: {p} is not a readable gzip/IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise NoisyDEQError(
            f"mnist: {p} has a bad IDX magic number {raw[:4].hex() or '(empty)'} "
            "(expected 0000080N for unsigned-byte data)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise NoisyDEQError(f"mnist: {p} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    n = 1
    for d in dims:
        n *= d
    if len(raw) - header != n:
        raise NoisyDEQError(
            f"mnist: {p} is truncated or padded: dims {dims} need {n} data bytes, "
            f"found {len(raw) - header}"
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=_IDX_DTYPES[raw[2]])
    return data.reshape(dims)


def _read_pair(images_path: Path, labels_path: Path, expected: int) -> tuple[Tensor, Tensor]:
    """Images (N, 784) float in [0, 1] and labels (N,) long, checked against each other."""
    for p in (images_path, labels_path):
        verify_checksum(p)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28) or images.shape[0] != expected:
        raise NoisyDEQError(
            f"mnist: {images_path} holds images of shape {tuple(images.shape)}, "
            f"expected ({expected}, 28, 28)"
        )
    if labels.ndim != 1 or labels.shape[0] != expected or int(labels.max()) > 9:
        raise NoisyDEQError(
            f"mnist: {labels_path} holds {tuple(labels.shape)} labels (max {int(labels.max())}), "
            f"expected {expected} labels in 0..9"
        )
    x = images.reshape(expected, 784).to(torch.float32) / 255.0
    return x, labels.to(torch.long)


# --------------------------------------------------------------------------- download


class _ChecksumMismatch(Exception):
    """A downloaded file's MD5 differs from the official one (the file is not kept)."""


def download_file(directory: Path, name: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> str | None:
    """Fetch one official file into ``directory``; return ``None`` or the last error text.

    The file appears (atomically, :func:`noisydeq.store.atomic_open`) only once its MD5
    matches the official sum.
    """
    last = "no mirror tried"
    for base in MIRRORS:
        h = hashlib.md5()
        try:
            with atomic_open(directory / name) as out, urllib.request.urlopen(
                base + name, timeout=timeout
            ) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                if h.hexdigest() != OFFICIAL_MD5[name]:
                    raise _ChecksumMismatch(h.hexdigest())
            return None
        except _ChecksumMismatch as err:
            last = f"{base}{name}: checksum mismatch (md5 {err})"
        except (OSError, http.client.HTTPException) as err:
            # URLError, timeouts and HTTP errors are OSErrors; a cut-off body is an
            # IncompleteRead (HTTPException)
            last = f"{base}{name}: {' '.join(str(err).split()) or type(err).__name__}"
    return last


def _want_download(download: bool | None) -> bool | None:
    if download is not None:
        return download
    env = os.environ.get(ENV_DOWNLOAD, "").strip().lower()
    if env in {"0", "false", "no", "off"}:
        return False
    if env in {"1", "true", "yes", "on"}:
        return True
    return None


def _ensure_files(directory: Path, download: bool | None) -> str | None:
    """Download missing files per the ``download`` policy; return a failure note or None."""
    policy = _want_download(download)
    stems = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    missing = [s for s in stems if find_file(directory, s) is None]
    if not missing or policy is False:
        return None
    if policy is None and len(missing) < len(stems):
        return None  # a partly filled directory (e.g. test set only) is used as it is
    for s in missing:  # the first file no mirror gives ends it: offline, one wait, not four
        error = download_file(directory, s + ".gz")
        if error is not None:
            return error
    return None


# ------------------------------------------------------------------------------ tasks


def _task(name: str, x_tr, y_tr, x_te, y_te, seed: int, source: str, notice=None) -> Task:
    return Task(
        name=name,
        kind="classification",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        in_features=784,
        out_features=10,
        seed=seed,
        source=source,
        notice=notice,
    )


def _missing_error(directory: Path, stems: tuple[str, ...], failure: str | None,
                   named: bool = False) -> NoisyDEQError:
    """``named``: the directory was given (``--data-dir`` or $NOISYDEQ_MNIST_DIR), so the
    advice is to point it at the files, not to pass what was passed."""
    names = ", ".join(s + ".gz" for s in stems)
    why = f"; download failed ({failure})" if failure else ""
    advice = (f"point --data-dir (or {ENV_DIR}) at the folder that holds them" if named
              else f"pass --data-dir or set {ENV_DIR}")
    return NoisyDEQError(f"mnist: {names} not found in {directory}{why}; {advice}")


def load_mnist10k(
    data_dir: str | os.PathLike | None = None, seed: int = 0, download: bool | None = None
) -> Task:
    """``mnist10k``: seeded stratified 8,000 / 2,000 split of the official MNIST test set."""
    directory, named = resolve_dir(data_dir)
    failure = _ensure_files(directory, download)
    ti, tl = find_file(directory, TEST_IMAGES), find_file(directory, TEST_LABELS)
    if ti is None or tl is None:
        raise _missing_error(directory, (TEST_IMAGES, TEST_LABELS), failure, named)
    x, y = _read_pair(ti, tl, N_OFFICIAL[TEST_IMAGES])
    train_idx, test_idx = stratified_split(y, MNIST10K_TEST, seed)
    return _task(
        "mnist10k", x[train_idx], y[train_idx], x[test_idx], y[test_idx], seed,
        source=f"{directory} (official test set, stratified 8000/2000 split, seed {seed})",
    )


def load_mnist(
    data_dir: str | os.PathLike | None = None, seed: int = 0, download: bool | None = None
) -> Task:
    """``mnist``: the official 60,000 / 10,000 split; falls back to ``mnist10k`` with a notice.

    ``seed`` does not change the official split (it is kept for provenance and training).
    """
    directory, named = resolve_dir(data_dir)
    failure = _ensure_files(directory, download)
    paths = {s: find_file(directory, s) for s in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES,
                                                  TEST_LABELS)}
    if paths[TRAIN_IMAGES] is None or paths[TRAIN_LABELS] is None:
        if paths[TEST_IMAGES] is None or paths[TEST_LABELS] is None:
            raise _missing_error(directory, tuple(paths), failure, named)
        task = load_mnist10k(directory, seed, download=False)
        notice = (
            f"mnist: training files not found in {directory}; using mnist10k "
            f"(seeded 8,000/2,000 split of the official test set). "
            f"Set {ENV_DOWNLOAD}=1 to fetch the official training files."
        )
        from dataclasses import replace

        return replace(task, notice=notice)
    x_tr, y_tr = _read_pair(paths[TRAIN_IMAGES], paths[TRAIN_LABELS], N_OFFICIAL[TRAIN_IMAGES])
    x_te, y_te = _read_pair(paths[TEST_IMAGES], paths[TEST_LABELS], N_OFFICIAL[TEST_IMAGES])
    return _task("mnist", x_tr, y_tr, x_te, y_te, seed, source=f"{directory} (official split)")
