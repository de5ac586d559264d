"""CIFAR-10 from the official *binary* distribution (no pickle), for users who have it.

Format (A. Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version"): the
files ``data_batch_1.bin`` … ``data_batch_5.bin`` (training) and ``test_batch.bin`` each hold
10,000 records of 3,073 bytes — one label byte (0…9), then 1,024 red, 1,024 green and 1,024
blue pixel bytes of a 32×32 image in row-major order — so each file is exactly 30,730,000
bytes. ``batches.meta.txt`` lists the class names.

Where the data are looked for: the ``data_dir`` argument (CLI ``--data-dir``), else
``$NOISYDEQ_CIFAR10_DIR``. The directory may hold the six files, or the folder
``cifar-10-batches-bin/`` with them, or the official archive ``cifar-10-binary.tar.gz``
(170,052,171 bytes, MD5 ``c32a1d4ab5d03f1284b67883e8d87530`` as published on that page),
which is then read member by member without extracting anything. The archive is checked
against its size and MD5 sum; the individual files (no official sums are published for
them) against their exact size and the label range. A wrong or truncated file is one error
line naming it. Nothing is downloaded.

Pixels are scaled to [0, 1] and kept flat (3,072 features, channel-major); ``in_shape`` is
(3, 32, 32) so convolutional models see the image. The split is the official 50,000 / 10,000.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.store import file_digest
from noisydeq.tasks.base import Task, named_data_dir

ENV_DIR = "NOISYDEQ_CIFAR10_DIR"
FOLDER = "cifar-10-batches-bin"
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_BYTES = 170_052_171
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32
#: records per official file (tests shrink it to check the reader on small synthetic files)
RECORDS_PER_FILE = 10_000
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def resolve_dir(data_dir: str | os.PathLike | None) -> Path:
    """The directory named by ``data_dir`` or ``$NOISYDEQ_CIFAR10_DIR``; it must exist."""
    p = named_data_dir(data_dir, ENV_DIR, "CIFAR-10")
    if p is None:
        raise NoisyDEQError(
            f"cifar10: no data directory; pass --data-dir or set {ENV_DIR} to a directory with "
            f"the official binary files ({FOLDER}/ or {ARCHIVE}); nothing is downloaded"
        )
    return p


def parse_records(raw: bytes, name: str) -> tuple[Tensor, Tensor]:
    """Images (N, 3072) float in [0, 1] and labels (N,) long from one binary file's bytes."""
    expected = RECORDS_PER_FILE * RECORD
    if len(raw) != expected:
        why = "truncated" if len(raw) < expected else "too long"
        raise NoisyDEQError(
            f"cifar10: {name} is {why}: {len(raw)} bytes, expected {expected} "
            f"({RECORDS_PER_FILE} records of {RECORD} bytes)"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(RECORDS_PER_FILE, RECORD)
    labels = table[:, 0].astype(np.int64)
    if int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise NoisyDEQError(
            f"cifar10: {name} record {bad} has label {int(labels[bad])} (expected 0..9); "
            "not a CIFAR-10 binary file"
        )
    x = torch.from_numpy(table[:, 1:].astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels)


def md5sum(path: Path) -> str:
    """MD5 hex digest of a file."""
    return file_digest(path, "md5")


def _read_archive(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    size = path.stat().st_size
    if size != ARCHIVE_BYTES:
        raise NoisyDEQError(
            f"cifar10: {path} has {size} bytes, the official archive {ARCHIVE_BYTES}; "
            "it is truncated or another file"
        )
    got = md5sum(path)
    if got != ARCHIVE_MD5:
        raise NoisyDEQError(
            f"cifar10: checksum mismatch for {path} (md5 {got}, expected {ARCHIVE_MD5})"
        )
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in names:
                member = tar.getmember(f"{FOLDER}/{name}")
                fh = tar.extractfile(member) if member.isfile() else None
                if fh is None:
                    raise KeyError(name)
                out[name] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise NoisyDEQError(f"cifar10: {path} is not a readable archive ({err})") from None
    except KeyError as err:
        raise NoisyDEQError(f"cifar10: {path} has no member {FOLDER}/{err.args[0]}") from None
    return out


def read_files(directory: Path) -> dict[str, bytes]:
    """The bytes of the six binary files, from the directory, its folder or the archive."""
    names = (*TRAIN_FILES, TEST_FILE)
    for root in (directory, directory / FOLDER):
        present = [n for n in names if (root / n).is_file()]
        if present:
            missing = [n for n in names if n not in present]
            if missing:
                raise NoisyDEQError(f"cifar10: {', '.join(missing)} missing in {root}")
            try:
                return {n: (root / n).read_bytes() for n in names}
            except OSError as err:
                raise NoisyDEQError(f"cifar10: cannot read {root} ({err.strerror})") from None
    if (directory / ARCHIVE).is_file():
        return _read_archive(directory / ARCHIVE, names)
    raise NoisyDEQError(
        f"cifar10: no CIFAR-10 binary data in {directory} (expected {', '.join(names)}, "
        f"a {FOLDER}/ folder with them, or {ARCHIVE})"
    )


def load_cifar10(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Task:
    """The official 50,000 / 10,000 split; ``seed`` is kept for provenance and training."""
    directory = resolve_dir(data_dir)
    raw = read_files(directory)
    parts = [parse_records(raw[n], n) for n in TRAIN_FILES]
    x_te, y_te = parse_records(raw[TEST_FILE], TEST_FILE)
    return Task(
        name="cifar10",
        kind="classification",
        x_train=torch.cat([p[0] for p in parts]),
        y_train=torch.cat([p[1] for p in parts]),
        x_test=x_te,
        y_test=y_te,
        in_features=RECORD - 1,
        out_features=10,
        seed=seed,
        source=f"{directory} (official binary files, 50000/10000 split)",
        in_shape=(3, 32, 32),
    )
