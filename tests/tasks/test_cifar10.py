"""CIFAR-10 binary reader on small synthetic files in the official record format."""

import io
import tarfile

import numpy as np
import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks import cifar10, load_task

N = 4  # records per synthetic file


def records(seed: int, n: int = N) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    raw = b"".join(bytes([lab]) + img.tobytes() for lab, img in zip(labels, pixels, strict=True))
    return raw, labels, pixels


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(cifar10, "RECORDS_PER_FILE", N)


def write_dir(root, folder=True):
    d = root / cifar10.FOLDER if folder else root
    d.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, name in enumerate((*cifar10.TRAIN_FILES, cifar10.TEST_FILE)):
        raw, labels, pixels = records(i)
        (d / name).write_bytes(raw)
        truth[name] = (labels, pixels)
    return truth


def test_reads_the_binary_layout(tmp_path, small):
    truth = write_dir(tmp_path)
    t = load_task("cifar10", data_dir=tmp_path)
    assert t.x_train.shape == (5 * N, 3072) and t.x_test.shape == (N, 3072)
    assert t.in_shape == (3, 32, 32) and t.out_features == 10
    labels, pixels = truth[cifar10.TEST_FILE]
    assert t.y_test.tolist() == labels.tolist()
    # channel-major: the first 1024 values are red, row-major within the image
    img = t.x_test[1].reshape(3, 32, 32)
    assert torch.equal((img * 255).round().to(torch.uint8), torch.from_numpy(pixels[1]))
    assert t.x_train[N].reshape(3, 32, 32)[2, 5, 7] * 255 == float(
        truth["data_batch_2.bin"][1][0, 2, 5, 7])


def test_flat_directory_works_too(tmp_path, small):
    write_dir(tmp_path, folder=False)
    assert len(load_task("cifar10", data_dir=tmp_path).x_train) == 5 * N


def test_truncated_wrong_and_missing_files_are_one_line(tmp_path, small):
    write_dir(tmp_path)
    d = tmp_path / cifar10.FOLDER
    good = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(good[:-100])
    with pytest.raises(NoisyDEQError, match="data_batch_3.bin is truncated"):
        load_task("cifar10", data_dir=tmp_path)
    (d / "data_batch_3.bin").write_bytes(good + good[: cifar10.RECORD])  # one record extra
    with pytest.raises(NoisyDEQError, match=rf"data_batch_3.bin is too long: {5 * cifar10.RECORD}"):
        load_task("cifar10", data_dir=tmp_path)
    bad = bytearray(good)
    bad[cifar10.RECORD] = 200  # label of the second record
    (d / "data_batch_3.bin").write_bytes(bytes(bad))
    with pytest.raises(NoisyDEQError, match="record 1 has label 200"):
        load_task("cifar10", data_dir=tmp_path)
    (d / "data_batch_3.bin").unlink()
    with pytest.raises(NoisyDEQError, match="data_batch_3.bin missing"):
        load_task("cifar10", data_dir=tmp_path)


def test_archive_is_checked_then_read_without_extracting(tmp_path, small, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate((*cifar10.TRAIN_FILES, cifar10.TEST_FILE)):
            raw = records(i)[0]
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    archive = tmp_path / cifar10.ARCHIVE
    archive.write_bytes(buf.getvalue())
    with pytest.raises(NoisyDEQError, match="bytes, the official archive"):
        load_task("cifar10", data_dir=tmp_path)
    monkeypatch.setattr(cifar10, "ARCHIVE_BYTES", archive.stat().st_size)
    with pytest.raises(NoisyDEQError, match="checksum mismatch"):
        load_task("cifar10", data_dir=tmp_path)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", cifar10.md5sum(archive))
    t = load_task("cifar10", data_dir=tmp_path)
    assert t.y_test.tolist() == records(5)[1].tolist()
    assert not (tmp_path / cifar10.FOLDER).exists()


def test_no_directory_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar10.ENV_DIR, raising=False)
    with pytest.raises(NoisyDEQError, match="no data directory"):
        load_task("cifar10")
    with pytest.raises(NoisyDEQError, match="not found"):
        load_task("cifar10", data_dir=tmp_path / "nope")
    with pytest.raises(NoisyDEQError, match="no CIFAR-10 binary data"):
        load_task("cifar10", data_dir=tmp_path)
