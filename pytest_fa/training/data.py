"""The data sets the protocol trains and diagnoses on, held as tensors. ``load_dataset(name, **config)`` returns a
:class:`Dataset` whose JSON-able ``spec`` rebuilds the same tensors (``dataset_from_spec``). Nothing is downloaded:
MNIST-1D and the teacher-student task are generated, Fashion-MNIST and CIFAR read from disk.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import hashlib
import json
import math
import os
import pathlib
import pickle
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pytest_fa.core.files import write_atomically
from pytest_fa.core.settings import MIN_EVAL_BATCHES
from pytest_fa.errors import DataError, setting

DATASETS = ("mnist1d", "fashion-mnist", "cifar10", "cifar100", "synthetic")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)
IMAGE_STATS = {  # per-channel (mean, std)
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# folder, classes, the batch files of each split, the meta file and its key of class names, as the archives hold them
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", 10, {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", 100, {"train": ["train"], "test": ["test"]}, "meta", "fine_label_names"),
}
# The only globals a CIFAR batch pickle holds: numpy's array and dtype rebuilders, under
# numpy 1's module names (the official Python 2 files) and numpy 2's (copies re-pickled
# since), for the default protocol (_reconstruct) and protocol 5 (_frombuffer).
_CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})

_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist1d": {"num_samples": 60000, "seed": 42},
    **dict.fromkeys(("fashion-mnist", "cifar10", "cifar100"), {"limit_train": None, "limit_test": None}),
    "synthetic": {
        "num_samples": 20000, "d_in": 32, "num_classes": 10, "teacher_width": 64, "seed": 0, "train_split": 0.8
    },
}

_SPEC_KEYS = {"name", "config", "preprocessing", "root"}

MAX_SAMPLES = 10**7
"""The most samples a generated data set may ask for (1.6 GB of MNIST-1D), checked before generating."""


@dataclass
class Dataset:
    """Train and test tensors plus the spec that rebuilds them."""

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    input_shape: tuple[int, ...]
    spec: dict = field(repr=False)

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with the four tensors on ``device``."""
        tensors = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **tensors, spec=copy.deepcopy(self.spec))


def cache_dir() -> pathlib.Path:
    """``$PYTEST_FA_CACHE``, else ``$XDG_CACHE_HOME/pytest-fa``, else ``~/.cache/pytest-fa``."""
    if os.environ.get("PYTEST_FA_CACHE"):
        path = pathlib.Path(os.environ["PYTEST_FA_CACHE"])
    else:
        path = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "pytest-fa"
    path = path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the cache folder {path}: {exc}; set PYTEST_FA_CACHE to a writable folder"
        ) from exc
    return path


def load_dataset(name: str, *, root: str | os.PathLike | None = None, **config: Any) -> Dataset:
    """Load data set ``name`` with ``config`` over its defaults; ``root``: where Fashion-MNIST or CIFAR lie."""
    _check_config(name, config)
    full = {**_DEFAULTS[name], **config}
    if name == "mnist1d":
        return _load_mnist1d(full)
    if name == "synthetic":
        return _load_synthetic(full)
    if name == "fashion-mnist":
        return _load_fashion_mnist(full, root)
    return _load_cifar(name, full, root)


def _check_config(name: str, config: Mapping[Any, Any]) -> None:
    """``name`` is a data set and ``config`` holds only its keys."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    defaults = _DEFAULTS[name]
    unknown = sorted(set(config) - set(defaults), key=repr)
    if unknown:
        raise DataError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} for {name!r}; accepted keys: {', '.join(defaults)}"
        )


def dataset_from_spec(spec: Mapping[str, Any], *, root: str | os.PathLike | None = None) -> Dataset:
    """Rebuild the data set ``spec`` describes from ``root``. A spec's recorded root (from a bundle, from
    anyone) is never read: ``root`` must be given, except for the built-in Fashion-MNIST folder."""
    if not isinstance(spec, Mapping):
        raise DataError(f"a data spec must be a dict, got {type(spec).__name__}")
    missing = sorted({"name", "config", "preprocessing"} - set(spec))
    extra = sorted(set(spec) - _SPEC_KEYS)
    if missing or extra:
        raise DataError(f"malformed data spec: missing keys {missing}, unexpected keys {extra}; "
                        f"a spec has the keys {sorted(_SPEC_KEYS)} as written by load_dataset")
    name, config, preprocessing = spec["name"], spec["config"], spec["preprocessing"]
    if not isinstance(config, Mapping) or not isinstance(preprocessing, Mapping):
        raise DataError("malformed data spec: 'config' and 'preprocessing' must be dicts")
    recorded_root = spec.get("root")
    if recorded_root is not None and not isinstance(recorded_root, str):
        raise DataError("malformed data spec: 'root' must be a string or null")
    if not isinstance(name, str):
        raise DataError(f"malformed data spec: 'name' must be a string, got {name!r}")
    default_root = name == "fashion-mnist" and recorded_root == FASHION_MNIST_ROOT
    if root is None and recorded_root is not None and not default_root:
        raise DataError(
            f"the bundle's data spec records data root {recorded_root}; a folder named in a bundle "
            f"is read only when you name it this run: pass {setting('data_root', recorded_root)} to read it"
        )
    _check_config(name, config)  # before the call: a key 'name' or 'root' would clash with its arguments
    dataset = load_dataset(name, root=root, **config)
    if _jsonable(preprocessing) != _jsonable(dataset.spec["preprocessing"]):
        raise DataError(f"the spec asks for preprocessing {dict(preprocessing)} but this version of pytest_fa "
                        f"produces {dataset.spec['preprocessing']} for {name!r}; the data cannot be rebuilt exactly")
    return dataset


def eval_batches(data: Dataset | tuple[torch.Tensor, torch.Tensor], num_batches: int = MIN_EVAL_BATCHES,
                 batch_size: int = 128, *, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_batches`` disjoint batches of ``batch_size`` samples of ``data`` (a :class:`Dataset`'s
    test split, or an ``(x, y)`` pair of tensors), drawn by a permutation seeded with ``seed``."""
    for key, value, minimum in (("num_batches", num_batches, 1), ("batch_size", batch_size, 1), ("seed", seed, None)):
        _check_int(key, value, minimum)
    if isinstance(data, Dataset):
        x, y = data.x_test, data.y_test
        has, advice = f"{data.name!r} has {len(y)} test samples", "use fewer or smaller batches, or a larger data set"
    else:
        x, y = data
        has = f"the data has {len(y)} samples"
        advice = f"pass more samples, or a smaller batch_size (the protocol needs at least {MIN_EVAL_BATCHES} batches)"
    needed = num_batches * batch_size
    if len(y) < needed:
        raise DataError(f"{has} but {num_batches} batches of {batch_size} need {needed}; {advice}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:needed].to(y.device)
    return [(x[index], y[index]) for index in order.split(batch_size)]


def _check_int(key: str, value: Any, minimum: int | None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DataError(f"{key} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise DataError(f"{key} must be at most {maximum}, got {value}")


def _check_limit(config: Mapping[str, Any]) -> None:
    for key in ("limit_train", "limit_test"):
        if config[key] is not None:
            _check_int(key, config[key], 1)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _make_spec(name: str, config: Mapping[str, Any], preprocessing: Mapping[str, Any], root: str | None) -> dict:
    return _jsonable({"name": name, "config": dict(config), "preprocessing": dict(preprocessing), "root": root})


# MNIST-1D

_MNIST1D_DTYPES = {"x_train": torch.float32, "y_train": torch.int64, "x_test": torch.float32, "y_test": torch.int64}


def _load_mnist1d(config: dict[str, Any]) -> Dataset:
    """Generated once per mnist1d version, ``num_samples`` and ``seed``, then read from a cache file
    holding the tensors and the generator's arguments (a cached run needs no ``import mnist1d``)."""
    _check_int("num_samples", config["num_samples"], 10, MAX_SAMPLES)
    _check_int("seed", config["seed"], 0)
    from importlib.metadata import PackageNotFoundError, version

    generator = "unknown"
    with contextlib.suppress(PackageNotFoundError):
        generator = version("mnist1d")
    chosen = {"num_samples": config["num_samples"], "seed": config["seed"]}
    key = hashlib.sha256(json.dumps({"mnist1d": generator, **chosen}, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "mnist1d" / f"mnist1d-{key}.pt"
    tensors = _read_mnist1d_cache(path, chosen)
    if tensors is None:
        tensors = _generate_mnist1d(chosen)
        with contextlib.suppress(OSError):  # a read-only cache: generated again next time
            write_atomically(path, lambda handle: torch.save(tensors, handle))
    args = json.loads(tensors.pop("args"))
    generator_args = {k: v for k, v in args.items() if k != "url"}
    preprocessing = {"standardised_by": "mnist1d.make_dataset", "generator_args": generator_args}
    spec = _make_spec("mnist1d", config, preprocessing, None)
    return Dataset("mnist1d", **tensors, num_classes=10, input_shape=(args["final_seq_length"],), spec=spec)


def _read_mnist1d_cache(path: pathlib.Path, chosen: dict[str, int]) -> dict[str, Any] | None:
    """The cache file's tensors and ``args``, None when it is missing, damaged or of other arguments."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        args = json.loads(cached["args"])
        valid = (
            set(cached) == {*_MNIST1D_DTYPES, "args"}
            and all(isinstance(cached[k], torch.Tensor) and cached[k].dtype == d for k, d in _MNIST1D_DTYPES.items())
            and "final_seq_length" in args
            and all(args[k] == v for k, v in chosen.items())
        )
    except Exception:  # missing or damaged: generated again
        return None
    return cached if valid else None


def _generate_mnist1d(chosen: dict[str, int]) -> dict[str, Any]:
    import mnist1d.data
    from mnist1d.utils import ObjectView

    args = {**mnist1d.data.get_dataset_args(as_dict=True), **chosen}
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        raw = mnist1d.data.make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    columns = {"x_train": ("x", np.float32), "y_train": ("y", np.int64),
               "x_test": ("x_test", np.float32), "y_test": ("y_test", np.int64)}
    tensors = {k: torch.from_numpy(np.asarray(raw[key], dtype)).contiguous() for k, (key, dtype) in columns.items()}
    return {**tensors, "args": json.dumps(args, sort_keys=True)}


# Teacher-student


def _load_synthetic(config: dict[str, Any]) -> Dataset:
    for key, minimum in (("num_samples", 2), ("d_in", 1), ("num_classes", 2), ("teacher_width", 1)):
        _check_int(key, config[key], minimum, MAX_SAMPLES if key == "num_samples" else None)
    _check_int("seed", config["seed"], None)
    split = config["train_split"]
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split < 1:
        raise DataError(f"train_split must be a number strictly between 0 and 1, got {split!r}")
    n, d_in, width, classes = (config[k] for k in ("num_samples", "d_in", "teacher_width", "num_classes"))
    num_train = int(n * split)
    if not 0 < num_train < n:
        raise DataError(f"num_samples={n} with train_split={split} leaves an empty split; raise num_samples")

    generator = torch.Generator().manual_seed(config["seed"])
    w1 = torch.randn(d_in, width, generator=generator) / math.sqrt(d_in)
    b1 = torch.randn(width, generator=generator) * 0.1
    w2 = torch.randn(width, classes, generator=generator) / math.sqrt(width)
    x = torch.randn(n, d_in, generator=generator)
    y = (torch.tanh(x @ w1 + b1) @ w2).argmax(dim=1)

    preprocessing = {"inputs": "standard normal, not rescaled", "labels": "argmax of teacher logits"}
    spec = _make_spec("synthetic", {**config, "train_split": float(split)}, preprocessing, None)
    return Dataset("synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:], classes, (d_in,), spec)


# Image data sets, read from their files


def _image_dataset(name: str, label: str, config: dict[str, Any], base: pathlib.Path,
                   splits: dict[str, tuple[torch.Tensor, torch.Tensor]], classes: int) -> Dataset:
    """The (N, C, H, W) uint8 images of each split scaled to [0, 1] and standardised by
    :data:`IMAGE_STATS`, once its labels are checked."""
    mean, std = IMAGE_STATS[name]
    mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
    tensors = {}
    for split, (images, labels) in splits.items():
        _check_labels(label, split, labels, images, classes)
        tensors[f"x_{split}"] = ((images.to(torch.float32) / 255.0) - mean_t) / std_t
        tensors[f"y_{split}"] = labels.to(torch.int64)
    preprocessing = {"divide_by": 255, "mean": list(mean), "std": list(std)}
    spec = _make_spec(name, config, preprocessing, str(base.absolute()))
    return Dataset(name, **tensors, num_classes=classes, input_shape=tuple(images.shape[1:]), spec=spec)


def _check_labels(name: str, split: str, labels: torch.Tensor, images: torch.Tensor, classes: int) -> None:
    if len(labels) != len(images):
        raise DataError(f"{name} {split} split has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{name} {split} split is empty")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise DataError(f"{name} {split} labels lie in [{int(labels.min())}, {int(labels.max())}], "
                        f"outside [0, {classes - 1}]; the files are not {name}")


def _read_idx(path: pathlib.Path, ndim: int) -> torch.Tensor:
    """The ``ndim``-D array of unsigned bytes in the idx file ``path`` (plain or gzip), read in place."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            data = bytearray(handle.read())
        if data[:4] != bytes((0, 0, 8, ndim)):
            raise ValueError(f"it does not start as an idx file of {ndim}-D unsigned bytes")
        shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
        return torch.from_numpy(np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape))
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"cannot read Fashion-MNIST from {path}: {exc}; the idx files are corrupt or not Fashion-MNIST "
                        f"(re-install them, or pass {setting('data_root')} with the right files)") from exc


def _load_fashion_mnist(config: dict[str, Any], root: str | os.PathLike | None) -> Dataset:
    _check_limit(config)
    base = pathlib.Path(root if root is not None else FASHION_MNIST_ROOT).expanduser()
    found = {}
    for stem in FASHION_MNIST_FILES:  # where torchvision keeps it, or in the folder itself; plain or .gz
        candidates = [f / name for f in (base / "FashionMNIST" / "raw", base) for name in (stem, f"{stem}.gz")]
        found[stem] = next((path for path in candidates if path.is_file()), None)
    if None in found.values():
        raise DataError(f"Fashion-MNIST not found in {base} (looked for {', '.join(FASHION_MNIST_FILES)}, "
                        "plain or .gz, there or under FashionMNIST/raw); run `apt-get install "
                        f"dataset-fashion-mnist` or pass {setting('data_root', '<folder with the idx files>')}")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        limit = config[f"limit_{split}"]
        images = _read_idx(found[f"{prefix}-images-idx3-ubyte"], 3)[:limit]
        labels = _read_idx(found[f"{prefix}-labels-idx1-ubyte"], 1)[:limit]
        if tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"Fashion-MNIST {split} images have shape {tuple(images.shape)}, not (N, 28, 28)")
        splits[split] = images.unsqueeze(1), labels
    return _image_dataset("fashion-mnist", "Fashion-MNIST", config, base, splits, 10)


def _unpickle_cifar(path: pathlib.Path) -> Any:
    """CIFAR batch ``path`` unpickled admitting no global but :data:`_CIFAR_GLOBALS` (``pickle.load`` runs any)."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _CIFAR_GLOBALS:
                return super().find_class(module, name)
            raise DataError(f"{path} is not a CIFAR batch: its pickle asks for {module}.{name}, which no CIFAR "
                            "batch holds; it was refused before anything in it ran; do not trust this file")

    with open(path, "rb") as handle:
        return Unpickler(handle, encoding="latin1").load()


def _read_cifar(folder: pathlib.Path, filenames: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels of the batches ``filenames``, joined in that order."""
    images, labels = [], []
    for filename in filenames:
        entry = _unpickle_cifar(folder / filename)
        images.append(entry["data"])
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    return np.vstack(images).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _load_cifar(name: str, config: dict[str, Any], root: str | os.PathLike | None) -> Dataset:
    _check_limit(config)
    folder, classes, batches, meta, meta_key = CIFAR_FILES[name]
    if root is None:
        raise DataError(f"{name} needs a data root: pass {setting('data_root', f'<folder containing {folder}>')} "
                        "(nothing is downloaded)")
    base = pathlib.Path(root).expanduser()
    if base.name == folder and not (base / folder).is_dir():
        base = base.parent
    missing = [f for f in [*batches["train"], *batches["test"], meta] if not (base / folder / f).is_file()]
    if missing:
        raise DataError(f"{name} not found: {base / folder} lacks {', '.join(missing)}; pass "
                        f"{setting('data_root', f'<folder containing {folder}>')} (nothing is downloaded)")
    try:
        num_names = len(_unpickle_cifar(base / folder / meta)[meta_key])
        read = {split: _read_cifar(base / folder, filenames) for split, filenames in batches.items()}
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {name} from {base / folder}: {exc}") from exc

    if num_names != classes:
        raise DataError(f"{base / folder} names {num_names} classes, not {classes}; is it {name}?")
    splits = {}
    for split, (images, labels) in read.items():
        limit = config[f"limit_{split}"]
        if images.dtype != np.uint8:
            raise DataError(f"{name} {split} images are {images.dtype}, not uint8; the files are not {name}")
        splits[split] = torch.from_numpy(np.ascontiguousarray(images[:limit])), torch.from_numpy(labels[:limit])
    return _image_dataset(name, name, config, base, splits, classes)
