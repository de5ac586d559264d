"""MNIST IDX reader, checksums, download (faked, no network), mnist10k split and fallback."""

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks import load_task
from noisydeq.tasks import mnist as M

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data/mnist")
needs_shared = pytest.mark.skipif(
    not (SHARED / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST test set absent"
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return head + arr.astype(np.uint8).tobytes()


def test_read_idx_roundtrip_gzip_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    for name in ("a", "a.gz"):
        t = M.read_idx(tmp_path / name)
        assert t.dtype == torch.uint8 and np.array_equal(t.numpy(), arr)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"abc", "bad IDX magic"),
        (b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc", "bad IDX magic"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated inside its IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "truncated or padded"),
        (b"", "bad IDX magic"),
    ],
)
def test_corrupt_idx(tmp_path, payload, message):
    p = tmp_path / "x"
    p.write_bytes(payload)
    with pytest.raises(NoisyDEQError, match=message):
        M.read_idx(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.zeros((4,), np.uint8)))[:-6])
    with pytest.raises(NoisyDEQError, match="not a readable gzip"):
        M.read_idx(p)


def test_checksum_mismatch_and_missing_dir(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(NoisyDEQError, match="checksum mismatch") as e:
        load_task("mnist10k", data_dir=tmp_path, download=False)
    assert "\n" not in str(e.value)
    with pytest.raises(NoisyDEQError, match="data directory not found"):
        load_task("mnist", data_dir=tmp_path / "nope")


def test_env_dir_and_empty_dir_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv(M.ENV_DIR, str(tmp_path / "missing"))
    with pytest.raises(NoisyDEQError, match=M.ENV_DIR):
        load_task("mnist10k")
    monkeypatch.setenv(M.ENV_DIR, str(tmp_path))
    with pytest.raises(NoisyDEQError, match="not found in") as e:
        load_task("mnist", download=False)
    # a folder the user named lacks the files: point it at them (it said "pass --data-dir"
    # to a user who had passed --data-dir)
    assert "point --data-dir" in str(e.value) and "pass --data-dir" not in str(e.value)
    monkeypatch.delenv(M.ENV_DIR)
    with pytest.raises(NoisyDEQError, match="point --data-dir") as e:
        load_task("mnist10k", data_dir=tmp_path, download=False)
    monkeypatch.setattr(M, "default_dir", lambda: tmp_path)  # nothing named: the default
    with pytest.raises(NoisyDEQError, match="pass --data-dir or set"):
        load_task("mnist10k", download=False)


def test_raw_files_structural_checks(tmp_path):
    imgs = np.zeros((10_000, 28, 28), np.uint8)
    labels = np.full((10_000,), 12, np.uint8)  # invalid label value
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(NoisyDEQError, match="labels in 0..9"):
        load_task("mnist10k", data_dir=tmp_path, download=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels[:50] % 10))
    with pytest.raises(NoisyDEQError, match="expected 10000 labels"):
        load_task("mnist10k", data_dir=tmp_path, download=False)


@needs_shared
def test_shared_checksums_match_md5sums_file():
    listed = dict(
        reversed(line.split()) for line in (SHARED / "MD5SUMS").read_text().splitlines() if line
    )
    for name, md5 in listed.items():
        assert M.OFFICIAL_MD5[name] == md5
        assert hashlib.md5((SHARED / name).read_bytes()).hexdigest() == md5


@needs_shared
def test_mnist10k_split_and_fallback():
    t = load_task("mnist10k", data_dir=SHARED, seed=0)
    assert t.x_train.shape == (8000, 784) and t.x_test.shape == (2000, 784)
    assert float(t.x_train.min()) == 0.0 and float(t.x_train.max()) == 1.0
    # independent decode of the official test labels with gzip + numpy
    raw = gzip.decompress((SHARED / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels = np.frombuffer(raw[8:], dtype=np.uint8)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels
    counts = np.bincount(labels, minlength=10)
    test_counts = np.bincount(t.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 0.2) <= 1)
    assert sorted(np.bincount(torch.cat([t.y_train, t.y_test]).numpy()).tolist()) == sorted(
        counts.tolist())
    # images decoded independently: pixel sums of a few rows of the union equal the raw data
    raw_img = np.frombuffer(gzip.decompress(
        (SHARED / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8).reshape(-1, 784)
    assert np.isclose(raw_img.sum() / 255.0,
                      float(torch.cat([t.x_train, t.x_test]).double().sum()))
    fallback = load_task("mnist", data_dir=SHARED, seed=0)
    assert fallback.name == "mnist10k" and "mnist10k" in fallback.notice
    assert torch.equal(fallback.x_test, t.x_test)
    assert not torch.equal(load_task("mnist10k", data_dir=SHARED, seed=1).y_test, t.y_test)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@needs_shared
def test_download_verifies_checksum(tmp_path, monkeypatch):
    good = (SHARED / "t10k-labels-idx1-ubyte.gz").read_bytes()
    served = []

    def fake_urlopen(url, timeout):
        served.append(url)
        if url.startswith(M.MIRRORS[0]):
            return _FakeResponse(b"corrupted")  # first mirror serves junk
        return _FakeResponse(good)

    monkeypatch.setattr(M.urllib.request, "urlopen", fake_urlopen)
    assert M.download_file(tmp_path, "t10k-labels-idx1-ubyte.gz") is None
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes() == good
    assert len(served) == 2 and list(tmp_path.glob(".*part")) == []

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(M.urllib.request, "urlopen", offline)
    err = M.download_file(tmp_path / "sub", "t10k-images-idx3-ubyte.gz")
    assert "network unreachable" in err
    assert not (tmp_path / "sub" / "t10k-images-idx3-ubyte.gz").exists()
