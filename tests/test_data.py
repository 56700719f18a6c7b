"""Tests for pytest_fa.training.data: every data set, the spec round trip, caching and the errors."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa.errors import DataError, FAError
from pytest_fa.training.data import (
    DATASETS,
    Dataset,
    cache_dir,
    dataset_from_spec,
    eval_batches,
    load_dataset,
)

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def fa_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("PYTEST_FA_CACHE", str(path))
    return path


def assert_same_tensors(a: Dataset, b: Dataset) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        ta, tb = getattr(a, key), getattr(b, key)
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, key
        assert torch.equal(ta, tb), key


def assert_well_formed(ds: Dataset, num_train: int, num_test: int) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert tuple(ds.x_train.shape) == (num_train, *ds.input_shape)
    assert tuple(ds.x_test.shape) == (num_test, *ds.input_shape)
    assert ds.y_train.shape == (num_train,) and ds.y_test.shape == (num_test,)
    labels = torch.cat([ds.y_train, ds.y_test])
    assert 0 <= int(labels.min()) and int(labels.max()) < ds.num_classes
    assert json.loads(json.dumps(ds.spec)) == ds.spec
    assert ds.spec["name"] == ds.name


def toy_dataset(num_test: int) -> Dataset:
    x = torch.arange(num_test, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(num_test) % 3
    return Dataset("toy", x[:1], y[:1], x, y, 3, (1,), {"name": "toy", "config": {}, "preprocessing": {}})


# cache_dir


def test_cache_dir_prefers_pytest_fa_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_FA_CACHE", str(tmp_path / "a" / "b"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_cache_dir_falls_back_to_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_FA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pytest-fa"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pytest-fa"
    assert cache_dir().is_dir()


def test_cache_dir_unwritable_is_a_data_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PYTEST_FA_CACHE", str(blocker / "cache"))
    with pytest.raises(DataError, match="PYTEST_FA_CACHE"):
        cache_dir()


# load_dataset / dataset_from_spec argument errors


def test_datasets_are_the_documented_five():
    assert DATASETS == ("mnist1d", "fashion-mnist", "cifar10", "cifar100", "synthetic")
    assert issubclass(DataError, FAError)


def test_unknown_name_lists_the_data_sets():
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_unknown_config_key_lists_accepted_keys(name):
    with pytest.raises(DataError, match="bogus") as info:
        load_dataset(name, bogus=1)
    accepted = "num_samples" if name in ("mnist1d", "synthetic") else "limit_train"
    assert accepted in str(info.value)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mnist1d", {"num_samples": 5}),
        ("mnist1d", {"num_samples": 500.0}),
        ("mnist1d", {"seed": -1}),
        ("synthetic", {"num_classes": 1}),
        ("synthetic", {"d_in": True}),
        ("synthetic", {"train_split": 1.0}),
        ("synthetic", {"num_samples": 3, "train_split": 0.1}),
        ("fashion-mnist", {"limit_train": 0}),
        ("cifar10", {"limit_test": "10"}),
    ],
)
def test_bad_config_values_are_data_errors(name, config):
    with pytest.raises(DataError):
        load_dataset(name, **config)


@pytest.mark.parametrize(
    "spec",
    [
        None,
        ["synthetic"],
        {"name": "synthetic", "config": {}},
        {"name": "synthetic", "config": {}, "preprocessing": {}, "extra": 1},
        {"name": "synthetic", "config": [], "preprocessing": {}},
        {"name": 3, "config": {}, "preprocessing": {}},
        {"name": "imagenet", "config": {}, "preprocessing": {}},
        {"name": "synthetic", "config": {"width": 3}, "preprocessing": {}},
        {"name": "synthetic", "config": {}, "preprocessing": {}, "root": 7},
    ],
)
def test_malformed_spec_is_a_data_error(spec):
    with pytest.raises(DataError):
        dataset_from_spec(spec)


@pytest.mark.parametrize("key", ["name", "root"])
def test_a_spec_config_key_that_clashes_with_an_argument_is_a_data_error(key):
    """``load_dataset(name, root=root, **config)`` raised a raw TypeError ("got multiple values")."""
    spec = {"name": "synthetic", "config": {key: "x"}, "preprocessing": {}}
    with pytest.raises(DataError) as info:
        dataset_from_spec(spec)
    assert f"unknown config key(s) {key!r} for 'synthetic'; accepted keys: num_samples" in str(info.value)


@pytest.mark.parametrize("name", ["mnist1d", "synthetic"])
def test_a_generated_data_set_beyond_the_maximum_is_refused_before_generating(name, monkeypatch):
    """A spec asking for 2**70 samples started generating them for ever."""
    import pytest_fa.training.data as data

    def generate(*args):
        raise AssertionError("generation started")

    monkeypatch.setattr(data, "_generate_mnist1d", generate)
    monkeypatch.setattr(torch, "randn", generate)
    for n in (data.MAX_SAMPLES + 1, 2**70):
        with pytest.raises(DataError, match=f"num_samples must be at most {data.MAX_SAMPLES}, got {n}"):
            load_dataset(name, num_samples=n)


def test_spec_with_other_preprocessing_is_refused():
    spec = load_dataset("synthetic", num_samples=100).spec
    spec["preprocessing"] = {"divide_by": 255}
    with pytest.raises(DataError, match="preprocessing"):
        dataset_from_spec(spec)


# synthetic


def test_synthetic_defaults():
    ds = load_dataset("synthetic")
    assert_well_formed(ds, 16000, 4000)
    assert ds.num_classes == 10 and ds.input_shape == (32,)
    assert ds.spec["config"] == {
        "num_samples": 20000, "d_in": 32, "num_classes": 10,
        "teacher_width": 64, "seed": 0, "train_split": 0.8,
    }
    assert set(torch.unique(ds.y_train).tolist()) == set(range(10))
    assert abs(float(ds.x_train.mean())) < 0.02 and abs(float(ds.x_train.std()) - 1) < 0.02


def test_synthetic_config_and_determinism():
    ds = load_dataset("synthetic", num_samples=300, d_in=5, num_classes=3, teacher_width=7, seed=4, train_split=0.5)
    assert_well_formed(ds, 150, 150)
    assert ds.num_classes == 3 and ds.input_shape == (5,)
    assert_same_tensors(ds, load_dataset("synthetic", num_samples=300, d_in=5, num_classes=3, teacher_width=7, seed=4, train_split=0.5))
    other = load_dataset("synthetic", num_samples=300, d_in=5, num_classes=3, teacher_width=7, seed=5, train_split=0.5)
    assert not torch.equal(ds.x_train, other.x_train)


def test_synthetic_labels_are_a_function_of_inputs():
    ds = load_dataset("synthetic", num_samples=2000, d_in=4, num_classes=4)
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    nearest = torch.cdist(x, x).fill_diagonal_(float("inf")).argmin(dim=1)
    assert (y[nearest] == y).float().mean() > 0.8


def test_synthetic_spec_round_trip():
    ds = load_dataset("synthetic", num_samples=500, seed=3)
    assert_same_tensors(ds, dataset_from_spec(json.loads(json.dumps(ds.spec))))


# Dataset


def test_to_moves_tensors_and_keeps_the_rest():
    ds = load_dataset("synthetic", num_samples=100)
    moved = ds.to("meta")
    assert all(getattr(moved, k).device.type == "meta" for k in ("x_train", "y_train", "x_test", "y_test"))
    assert ds.x_train.device.type == "cpu"
    assert (moved.name, moved.num_classes, moved.input_shape, moved.spec) == (ds.name, ds.num_classes, ds.input_shape, ds.spec)
    assert "tensor" not in repr(ds)


# eval_batches


def test_eval_batches_are_deterministic_disjoint_and_from_test():
    ds = toy_dataset(1000)
    batches = eval_batches(ds, num_batches=4, batch_size=50, seed=7)
    assert len(batches) == 4
    assert all(x.shape == (50, 1) and y.shape == (50,) for x, y in batches)
    ids = torch.cat([x[:, 0] for x, _ in batches]).long()
    assert len(set(ids.tolist())) == 200
    for x, y in batches:
        assert torch.equal(y, x[:, 0].long() % 3)
    again = eval_batches(ds, num_batches=4, batch_size=50, seed=7)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = eval_batches(ds, num_batches=4, batch_size=50, seed=8)
    assert not torch.equal(batches[0][0], other[0][0])
    assert not torch.equal(ids, torch.arange(200))


@settings(max_examples=50, deadline=None)
@given(num_test=st.integers(1, 300), num_batches=st.integers(1, 10), batch_size=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_eval_batches_property(num_test, num_batches, batch_size, seed):
    ds = toy_dataset(num_test)
    if num_batches * batch_size > num_test:
        with pytest.raises(DataError, match=str(num_batches * batch_size)):
            eval_batches(ds, num_batches, batch_size, seed=seed)
        return
    batches = eval_batches(ds, num_batches, batch_size, seed=seed)
    ids = torch.cat([x[:, 0] for x, _ in batches]).long().tolist()
    assert len(batches) == num_batches and len(ids) == len(set(ids)) == num_batches * batch_size
    assert all(0 <= i < num_test for i in ids)


def test_eval_batches_too_few_samples_says_what_to_do():
    with pytest.raises(DataError) as info:
        eval_batches(toy_dataset(100), num_batches=8, batch_size=128)
    message = str(info.value)
    assert "100" in message and "1024" in message and "fewer" in message


@pytest.mark.parametrize(("num_batches", "batch_size"), [(0, 10), (1, 0), (-1, 10), (2.0, 10), (True, 10)])
def test_eval_batches_bad_sizes(num_batches, batch_size):
    with pytest.raises(DataError):
        eval_batches(toy_dataset(100), num_batches, batch_size)


def test_eval_batches_of_a_pair_are_those_of_the_test_split():
    ds = toy_dataset(300)
    pairs = eval_batches((ds.x_test, ds.y_test), 4, 50, seed=3)
    for (x, y), (dx, dy) in zip(pairs, eval_batches(ds, 4, 50, seed=3), strict=True):
        assert torch.equal(x, dx) and torch.equal(y, dy)
    with pytest.raises(DataError, match="the data has 300 samples but 8 batches of 128 need 1024; pass more samples"):
        eval_batches((ds.x_test, ds.y_test))


# MNIST-1D


def test_mnist1d_small(fa_cache):
    ds = load_dataset("mnist1d", num_samples=500)
    assert_well_formed(ds, 400, 100)
    assert ds.num_classes == 10 and ds.input_shape == (40,)
    x = torch.cat([ds.x_train, ds.x_test])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert set(torch.unique(ds.y_train).tolist()) == set(range(10))
    assert ds.spec["config"] == {"num_samples": 500, "seed": 42}
    assert ds.spec["preprocessing"]["standardised_by"] == "mnist1d.make_dataset"
    assert [path.suffix for path in (fa_cache / "mnist1d").iterdir()] == [".pt"]  # one file: tensors and arguments


def test_mnist1d_cache_hit_skips_generation(monkeypatch):
    import mnist1d.data

    first = load_dataset("mnist1d", num_samples=300, seed=1)

    def refuse(*args, **kwargs):
        raise AssertionError("make_dataset called on a cache hit")

    monkeypatch.setattr(mnist1d.data, "make_dataset", refuse)
    assert_same_tensors(first, load_dataset("mnist1d", num_samples=300, seed=1))
    assert_same_tensors(first, dataset_from_spec(json.loads(json.dumps(first.spec))))
    with pytest.raises(AssertionError, match="cache hit"):
        load_dataset("mnist1d", num_samples=300, seed=2)


def test_mnist1d_cache_is_keyed_and_regenerates_when_corrupt(fa_cache):
    a = load_dataset("mnist1d", num_samples=200, seed=1)
    b = load_dataset("mnist1d", num_samples=200, seed=2)
    assert not torch.equal(a.x_train, b.x_train)
    files = sorted((fa_cache / "mnist1d").glob("*.pt"))
    assert len(files) == 2
    for path in files:
        path.write_bytes(b"not a torch file")
    assert_same_tensors(a, load_dataset("mnist1d", num_samples=200, seed=1))
    assert not list((fa_cache / "mnist1d").glob(".*.tmp"))


def test_mnist1d_restores_global_rngs():
    np.random.seed(123)
    random.seed(456)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(456)
    load_dataset("mnist1d", num_samples=100, seed=9)
    assert np.random.random() == expected_np
    assert random.random() == expected_py


# Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_fashion(num_train=12, num_test=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
    }


def write_fashion(folder: pathlib.Path, arrays, compressed: bool) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        if compressed:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / stem).write_bytes(idx_bytes(array))
    return folder


def expected_fashion(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().unsqueeze(1) / 255
    return (x - 0.2860) / 0.3530


@pytest.mark.parametrize("layout", ["debian-gz", "plain", "torchvision"])
def test_fashion_mnist_layouts(tmp_path, fa_cache, layout):
    arrays = fake_fashion()
    root = tmp_path / "fmnist"
    if layout == "debian-gz":
        write_fashion(root, arrays, compressed=True)
    elif layout == "plain":
        write_fashion(root, arrays, compressed=False)
    else:
        write_fashion(root / "FashionMNIST" / "raw", arrays, compressed=False)
    ds = load_dataset("fashion-mnist", root=root)
    assert_well_formed(ds, 12, 6)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    torch.testing.assert_close(ds.x_train, expected_fashion(arrays["train-images-idx3-ubyte"]))
    torch.testing.assert_close(ds.x_test, expected_fashion(arrays["t10k-images-idx3-ubyte"]))
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.spec["preprocessing"] == {"divide_by": 255, "mean": [0.2860], "std": [0.3530]}
    assert not fa_cache.exists()  # read in place: nothing copied to the cache
    assert_same_tensors(ds, dataset_from_spec(json.loads(json.dumps(ds.spec)), root=root))


def test_fashion_mnist_limits(tmp_path):
    arrays = fake_fashion()
    root = write_fashion(tmp_path / "fmnist", arrays, compressed=True)
    ds = load_dataset("fashion-mnist", root=root, limit_train=5, limit_test=2)
    assert_well_formed(ds, 5, 2)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"][:5].tolist()
    assert ds.spec["config"] == {"limit_train": 5, "limit_test": 2}
    assert_same_tensors(ds, dataset_from_spec(ds.spec, root=root))


def test_fashion_mnist_is_read_from_the_root_given(tmp_path):
    first = write_fashion(tmp_path / "one", fake_fashion(seed=1), compressed=True)
    second = write_fashion(tmp_path / "two", fake_fashion(seed=2), compressed=True)
    a = load_dataset("fashion-mnist", root=first)
    b = load_dataset("fashion-mnist", root=second)
    assert not torch.equal(a.x_train, b.x_train)
    assert_same_tensors(a, load_dataset("fashion-mnist", root=first))


@pytest.mark.parametrize("contents", ["nothing", "three-files", "missing-folder"])
def test_fashion_mnist_missing_files(tmp_path, contents):
    root = tmp_path / "fmnist"
    if contents != "missing-folder":
        root.mkdir()
    if contents == "three-files":
        arrays = fake_fashion()
        del arrays["t10k-labels-idx1-ubyte"]
        write_fashion(root, arrays, compressed=True)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=root)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "setting `data_root=<folder with the idx files>`" in str(info.value)


def test_fashion_mnist_corrupt_files(tmp_path):
    root = write_fashion(tmp_path / "gz", fake_fashion(), compressed=True)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("fashion-mnist", root=root)

    arrays = fake_fashion()
    arrays["t10k-labels-idx1-ubyte"][0] = 11
    root = write_fashion(tmp_path / "labels", arrays, compressed=False)
    with pytest.raises(DataError, match="labels"):
        load_dataset("fashion-mnist", root=root)

    arrays = fake_fashion()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:3]
    root = write_fashion(tmp_path / "count", arrays, compressed=False)
    with pytest.raises(DataError, match="12 images but 3 labels"):
        load_dataset("fashion-mnist", root=root)

    root = write_fashion(tmp_path / "idx", fake_fashion(), compressed=False)
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("fashion-mnist", root=root)

    root = write_fashion(tmp_path / "deflate", fake_fashion(), compressed=True)
    packed = bytearray((root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    packed[10:14] = b"\xff\xff\xff\xff"  # the compressed stream itself, past gzip's header
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: .*the idx files are corrupt"):
        load_dataset("fashion-mnist", root=root)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files():
    ds = load_dataset("fashion-mnist", limit_train=2000, limit_test=500)
    assert_well_formed(ds, 2000, 500)
    assert ds.spec["root"] == str(DEBIAN_FASHION_MNIST)
    assert set(torch.unique(ds.y_train).tolist()) == set(range(10))
    assert abs(float(ds.x_train.mean())) < 0.05 and abs(float(ds.x_train.std()) - 1) < 0.05
    assert_same_tensors(ds, dataset_from_spec(ds.spec))


# CIFAR


def write_cifar(root: pathlib.Path, name: str, num_per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100

    def batch():
        return {
            "data": rng.integers(0, 256, (num_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, classes, num_per_batch).tolist(),
        }

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch() for i in range(1, 6)} | {"test_batch": batch()}
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        files = {"train": batch(), "test": batch()}
        for entry in files.values():
            entry["fine_labels"] = entry.pop("labels")
            entry["coarse_labels"] = [label // 5 for label in entry["fine_labels"]]
        meta = ("meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"k{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    for filename, entry in [*files.items(), meta]:
        with open(folder / filename, "wb") as handle:
            pickle.dump(entry, handle)
    return files


def cifar_images(entries) -> torch.Tensor:
    data = np.concatenate([entry["data"] for entry in entries]).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data).float() / 255


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_tiny(tmp_path, name):
    files = write_cifar(tmp_path, name)
    ds = load_dataset(name, root=tmp_path)
    classes = 10 if name == "cifar10" else 100
    num_train = 20 if name == "cifar10" else 4
    assert_well_formed(ds, num_train, 4)
    assert ds.num_classes == classes and ds.input_shape == (3, 32, 32)
    test_entry = files["test_batch" if name == "cifar10" else "test"]
    train_entries = [v for k, v in files.items() if k not in ("test_batch", "test")]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    assert ds.y_test.tolist() == test_entry[label_key]
    assert ds.y_train.tolist() == sum((e[label_key] for e in train_entries), [])
    mean = torch.tensor(ds.spec["preprocessing"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ds.spec["preprocessing"]["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.x_test, (cifar_images([test_entry]) - mean) / std)
    torch.testing.assert_close(ds.x_train, (cifar_images(train_entries) - mean) / std)
    expected_mean = [0.4914, 0.4822, 0.4465] if name == "cifar10" else [0.5071, 0.4865, 0.4409]
    assert ds.spec["preprocessing"]["mean"] == expected_mean
    assert_same_tensors(ds, dataset_from_spec(json.loads(json.dumps(ds.spec)), root=tmp_path))


def test_cifar_limits_and_folder_as_root(tmp_path):
    write_cifar(tmp_path, "cifar10")
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", limit_train=7, limit_test=3)
    assert_well_formed(ds, 7, 3)
    full = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(ds.x_train, full.x_train[:7]) and torch.equal(ds.y_test, full.y_test[:3])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_needs_a_root(tmp_path, name):
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    with pytest.raises(DataError, match=f"setting `data_root=<folder containing {folder}>`"):
        load_dataset(name)
    with pytest.raises(DataError, match=folder):
        load_dataset(name, root=tmp_path / "does-not-exist")
    with pytest.raises(DataError, match=folder):
        load_dataset(name, root=tmp_path)


def test_cifar_wrong_or_broken_files(tmp_path):
    write_cifar(tmp_path / "c100", "cifar100")
    os.rename(tmp_path / "c100" / "cifar-100-python", tmp_path / "c100" / "cifar-10-batches-py")
    with pytest.raises(DataError):
        load_dataset("cifar10", root=tmp_path / "c100")

    write_cifar(tmp_path / "broken", "cifar10")
    (tmp_path / "broken" / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("cifar10", root=tmp_path / "broken")

    write_cifar(tmp_path / "labels", "cifar10")
    path = tmp_path / "labels" / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(path.read_bytes())
    entry["labels"][0] = 10
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match="labels"):
        load_dataset("cifar10", root=tmp_path / "labels")

    write_cifar(tmp_path / "objects", "cifar10")
    path = tmp_path / "objects" / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes())
    entry["data"] = entry["data"].astype(object)
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match="cifar10 test images are object, not uint8"):
        load_dataset("cifar10", root=tmp_path / "objects")


def test_a_cached_mnist1d_loads_without_importing_the_generator(small_data, isolated_cache):
    """The cache's index of generator arguments spares a cached run ``import mnist1d``
    (scipy and matplotlib), and the data and spec read back are the generated ones."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch; from pytest_fa.training.data import load_dataset; "
        f"d = load_dataset('mnist1d', num_samples={len(small_data.y_train) + len(small_data.y_test)}); "
        "print('mnist1d' in sys.modules, float(d.x_test.sum()), d.spec['preprocessing']['generator_args']['final_seq_length'])"
    )
    env = {**os.environ, "PYTEST_FA_CACHE": str(isolated_cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", repr(float(small_data.x_test.sum())), "40"]


def test_damaged_mnist1d_arguments_are_rebuilt_from_the_generator(fa_cache):
    first = load_dataset("mnist1d", num_samples=500)
    (path,) = (fa_cache / "mnist1d").glob("*.pt")
    for args in ("{not json", json.dumps({"num_samples": 400, "seed": 42, "final_seq_length": 40})):
        torch.save({**torch.load(path, weights_only=True), "args": args}, path)
        again = load_dataset("mnist1d", num_samples=500)
        assert_same_tensors(again, first)
        assert again.spec == first.spec
        assert json.loads(torch.load(path, weights_only=True)["args"])["num_samples"] == 500


def test_fashion_mnist_files_of_random_bytes_get_a_reason(tmp_path):
    root = tmp_path / "noise"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / name).write_bytes(random.Random(name).randbytes(3000))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=root)
    message = str(info.value)
    assert not message.endswith(": ") and "the idx files are corrupt or not Fashion-MNIST" in message
    assert "setting `data_root`" in message
