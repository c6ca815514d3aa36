"""Image data sources: the bundled MNIST subset, MNIST IDX files and CIFAR-10 python batches."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from entropy_probe import data
from entropy_probe.errors import DataError, SpecError, UserError


def _rows(source) -> set[bytes]:
    x, _ = source.get(np.arange(len(source)))
    return {row.tobytes() for row in x.numpy().reshape(len(source), -1)}


# --- bundled MNIST ---------------------------------------------------------------------------

def test_bundled_mnist_pool_shapes():
    pool = data.from_spec("mnist")
    x, labels = pool.get(np.arange(len(pool)))
    assert pool.shape == (1, 28, 28)
    assert len(pool) == 4000
    assert np.bincount(labels.numpy()).tolist() == [400] * 10
    assert pool.quantization_step == pytest.approx(1 / 255)
    assert pool.pixel_range == (0.0, 1.0)
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    np.testing.assert_allclose(x.numpy() * 255, np.round(x.numpy() * 255), atol=1e-4)


def test_bundled_mnist_holds_500_per_class():
    train = data.from_spec("mnist")
    heldout = data.from_spec("mnist:split=heldout")
    _, train_labels = train.get(np.arange(len(train)))
    _, held_labels = heldout.get(np.arange(len(heldout)))
    counts = np.bincount(train_labels.numpy()) + np.bincount(held_labels.numpy())
    assert counts.tolist() == [500] * 10


def test_bundled_mnist_subset_is_first_per_class():
    small = data.from_spec("mnist:n_c=10")
    again = data.from_spec("mnist:n_c=10")
    larger = data.from_spec("mnist:n_c=20")
    x_small, labels_small = small.get(np.arange(len(small)))
    x_again, _ = again.get(np.arange(len(again)))
    x_larger, labels_larger = larger.get(np.arange(len(larger)))
    assert len(small) == 100
    assert np.bincount(labels_small.numpy()).tolist() == [10] * 10
    assert np.array_equal(x_small.numpy(), x_again.numpy())
    for digit in range(10):
        first_of_larger = x_larger[labels_larger == digit][:10]
        assert np.array_equal(x_small[labels_small == digit].numpy(), first_of_larger.numpy())


def test_bundled_mnist_heldout_disjoint():
    heldout = data.from_spec("mnist:split=heldout")
    _, labels = heldout.get(np.arange(len(heldout)))
    assert len(heldout) == 1000
    assert np.bincount(labels.numpy()).tolist() == [100] * 10
    assert not _rows(heldout) & _rows(data.from_spec("mnist"))


def test_bundled_mnist_heldout_spec():
    assert data.from_spec("mnist:n_c=10").heldout_spec == "mnist:split=heldout"
    assert data.from_spec("mnist:n_c=10,range=pm1").heldout_spec == "mnist:range=pm1,split=heldout"


def test_bundled_mnist_pm1_range():
    source = data.from_spec("mnist:n_c=1,range=pm1")
    x, _ = source.get(np.arange(len(source)))
    assert source.pixel_range == (-1.0, 1.0)
    assert source.quantization_step == pytest.approx(2 / 255)
    assert float(x.min()) == pytest.approx(-1.0)


@pytest.mark.parametrize("spec, error", [("mnist:n_c=-1", SpecError), ("mnist:n_c=401", DataError), ("mnist:split=test", SpecError)])
def test_bundled_mnist_rejects(spec, error):
    with pytest.raises(error):
        data.from_spec(spec)


def test_digits_heldout_takes_n_c():
    source = data.from_spec("digits:split=heldout,n_c=3")
    _, labels = source.get(np.arange(len(source)))
    assert np.bincount(labels.numpy()).tolist() == [3] * 10


# --- MNIST IDX ---------------------------------------------------------------------------------

def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(directory, prefix: str, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        payload = _idx_bytes(array)
        name = f"{prefix}-{kind}"
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / name).write_bytes(payload)


@pytest.fixture
def idx_dir(tmp_path):
    """Train split: 30 images 4×6, image i filled with the value 8i, labels i mod 3 (plain files).
    Test split: 12 images, value 200 + i, labels i mod 4 (gzip-compressed)."""
    train = np.stack([np.full((4, 6), 8 * i) for i in range(30)])
    test = np.stack([np.full((4, 6), 200 + i) for i in range(12)])
    _write_idx(tmp_path, "train", train, np.arange(30) % 3, compress=False)
    _write_idx(tmp_path, "t10k", test, np.arange(12) % 4, compress=True)
    return tmp_path


def test_mnist_idx_train_split(idx_dir):
    source = data.from_spec(f"mnist-idx:dir={idx_dir}")
    x, labels = source.get(np.arange(len(source)))
    assert source.shape == (1, 4, 6)
    assert len(source) == 30
    assert labels.tolist() == [i % 3 for i in range(30)]
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), np.arange(30) * 8 / 255, rtol=1e-6)
    assert source.quantization_step == pytest.approx(1 / 255)
    assert source.heldout_spec == f"mnist-idx:dir={idx_dir},split=test"


def test_mnist_idx_gz_test_split(idx_dir):
    source = data.from_spec(f"mnist-idx:dir={idx_dir},split=test,range=pm1")
    x, labels = source.get(np.arange(len(source)))
    assert len(source) == 12
    assert labels.tolist() == [i % 4 for i in range(12)]
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), 2 * (200 + np.arange(12)) / 255 - 1, rtol=1e-6)
    assert source.quantization_step == pytest.approx(2 / 255)


def test_mnist_idx_first_n_c(idx_dir):
    source = data.from_spec(f"mnist-idx:dir={idx_dir},n_c=2")
    x, labels = source.get(np.arange(len(source)))
    # Class c has images c, c + 3, c + 6, ... in file order, and the subset keeps the first two.
    assert sorted(np.round(x[:, 0, 0, 0].numpy() * 255 / 8).astype(int).tolist()) == [0, 1, 2, 3, 4, 5]
    assert np.bincount(labels.numpy()).tolist() == [2, 2, 2]


def test_mnist_idx_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        data.from_spec(f"mnist-idx:dir={missing}")


def test_mnist_idx_missing_file(idx_dir):
    (idx_dir / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        data.from_spec(f"mnist-idx:dir={idx_dir}")


def test_mnist_idx_truncated_file(tmp_path):
    payload = _idx_bytes(np.zeros((5, 4, 4)))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(payload[:-7])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="truncated"):
        data.from_spec(f"mnist-idx:dir={tmp_path}")


def test_mnist_idx_not_idx(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"<html>not an idx file</html>")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="not an IDX file"):
        data.from_spec(f"mnist-idx:dir={tmp_path}")


def test_mnist_idx_needs_dir():
    with pytest.raises(SpecError, match="needs a directory"):
        data.from_spec("mnist-idx")


# --- CIFAR-10 ----------------------------------------------------------------------------------

def _cifar_batch(first: int, count: int, byte_keys: bool) -> dict:
    """Images first..first+count-1: red = index mod 256, green = 7, blue = 250; label index mod 10."""
    rows = np.zeros((count, 3072), dtype=np.uint8)
    for row, index in enumerate(range(first, first + count)):
        rows[row, :1024] = index % 256
        rows[row, 1024:2048] = 7
        rows[row, 2048:] = 250
    batch = {"batch_label": "batch", "labels": [i % 10 for i in range(first, first + count)], "data": rows, "filenames": ["x"] * count}
    if byte_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    return batch


@pytest.fixture
def cifar_dir(tmp_path):
    """Five training batches of 20 images and a test batch of 10, pickled with protocol 2."""
    for number in range(1, 6):
        batch = _cifar_batch(20 * (number - 1), 20, byte_keys=number % 2 == 0)
        (tmp_path / f"data_batch_{number}").write_bytes(pickle.dumps(batch, protocol=2))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_cifar_batch(1000, 10, byte_keys=False), protocol=2))
    return tmp_path


def test_cifar10_train_split(cifar_dir):
    source = data.from_spec(f"cifar10:dir={cifar_dir}")
    x, labels = source.get(np.arange(len(source)))
    assert source.shape == (3, 32, 32)
    assert len(source) == 100
    assert labels.tolist() == [i % 10 for i in range(100)]
    np.testing.assert_allclose(x[:, 0, 5, 9].numpy(), np.arange(100) / 255, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1].numpy(), 7 / 255, rtol=1e-6)
    np.testing.assert_allclose(x[:, 2].numpy(), 250 / 255, rtol=1e-6)
    assert source.num_classes == 10
    assert source.heldout_spec == f"cifar10:dir={cifar_dir},split=test"


def test_cifar10_test_split_and_n_c(cifar_dir):
    test = data.from_spec(f"cifar10:dir={cifar_dir},split=test")
    assert len(test) == 10
    subset = data.from_spec(f"cifar10:dir={cifar_dir},n_c=3")
    x, labels = subset.get(np.arange(len(subset)))
    assert np.bincount(labels.numpy()).tolist() == [3] * 10
    # The first three images of class c are c, c + 10 and c + 20 (file order).
    assert sorted(np.round(x[:, 0, 0, 0].numpy() * 255).astype(int).tolist()) == list(range(30))


def test_cifar10_missing_batch(cifar_dir):
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        data.from_spec(f"cifar10:dir={cifar_dir}")


def test_cifar10_malformed_batch(cifar_dir):
    (cifar_dir / "data_batch_2").write_bytes(pickle.dumps(["not", "a", "dict"], protocol=2))
    with pytest.raises(DataError, match="data_batch_2"):
        data.from_spec(f"cifar10:dir={cifar_dir}")


def test_cifar10_wrong_data_shape(cifar_dir):
    batch = _cifar_batch(0, 4, byte_keys=False)
    batch["data"] = batch["data"][:, :100]
    (cifar_dir / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="3072"):
        data.from_spec(f"cifar10:dir={cifar_dir}")


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_cifar10_rejects_foreign_globals(cifar_dir):
    marker = cifar_dir / "exploited"
    (cifar_dir / "data_batch_4").write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        data.from_spec(f"cifar10:dir={cifar_dir}")
    assert not marker.exists()


def test_cifar10_missing_directory(tmp_path):
    with pytest.raises(UserError, match="absent"):
        data.from_spec(f"cifar10:dir={tmp_path / 'absent'}")
