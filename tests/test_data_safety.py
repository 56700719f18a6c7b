"""Reading data never runs code, and a data root written in a bundle is never read unless the
user names it on this run (README "Threat model"): CIFAR batches go through a restricted
unpickler, and the bundle's recorded root needs ``data_root`` to be given."""

from __future__ import annotations

import os
import pickle
import shlex
import struct

import pytest
import torch
from test_data import write_cifar

from pytest_fa.errors import DataError
from pytest_fa.protocol import ProtocolRunner, ProtocolSettings
from pytest_fa.training.checkpoint import save_bundle
from pytest_fa.training.data import dataset_from_spec, load_dataset
from pytest_fa.training.cli import main
from pytest_fa.training.trainer import train

SYSTEM = f"{os.system.__module__}.system"


@pytest.fixture(autouse=True)
def fa_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_FA_CACHE", str(tmp_path / "cache"))


class RunsAShellCommand:
    """Unpickling this runs ``touch marker``, as a crafted batch would run any command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_crafted_cifar(root, name="cifar10", num_per_batch=16):
    """A CIFAR folder whose first training batch runs a shell command when unpickled."""
    write_cifar(root, name, num_per_batch=num_per_batch)
    path = root / ("cifar-10-batches-py/data_batch_1" if name == "cifar10" else "cifar-100-python/train")
    entry = pickle.loads(path.read_bytes())
    marker = root.parent / f"{root.name}-marker"
    entry["comment"] = RunsAShellCommand(marker)
    path.write_bytes(pickle.dumps(entry))
    return path, marker


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_a_crafted_cifar_batch_is_refused_without_running_it(tmp_path, name):
    path, marker = write_crafted_cifar(tmp_path / "crafted", name)
    with pytest.raises(DataError) as info:
        load_dataset(name, root=tmp_path / "crafted")
    message = str(info.value)
    assert str(path) in message and SYSTEM in message
    assert "not a CIFAR batch" in message and "do not trust" in message
    assert not marker.exists()


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (the official CIFAR files are Python 2 pickles)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(entry) -> bytes:
    """``entry`` as the official Python 2 files hold it: protocol 2, str as bytes, and numpy's
    arrays rebuilt by ``numpy.core.multiarray._reconstruct``."""
    import io

    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump({k.encode(): v for k, v in entry.items()})
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.mark.parametrize("written", ["python2", "protocol-5"])
def test_cifar_batches_as_written_elsewhere_still_load(tmp_path, written):
    """The official Python 2 files and a copy re-pickled with the highest protocol use other
    globals than the default protocol the other tests write; both are CIFAR and load."""
    files = write_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    for filename in [*files, "batches.meta"]:
        entry = pickle.loads((folder / filename).read_bytes())
        data = py2_pickle(entry) if written == "python2" else pickle.dumps(entry, protocol=5)
        (folder / filename).write_bytes(data)
    if written == "python2":
        assert b"cnumpy.core.multiarray\n_reconstruct" in (folder / "test_batch").read_bytes()
    else:
        assert b"_frombuffer" in (folder / "test_batch").read_bytes()
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.y_test.tolist() == files["test_batch"]["labels"]
    expected = torch.from_numpy(files["test_batch"]["data"].reshape(-1, 3, 32, 32)).float() / 255
    mean = torch.tensor(ds.spec["preprocessing"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ds.spec["preprocessing"]["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.x_test, (expected - mean) / std)


def test_a_root_recorded_in_a_spec_needs_the_users_root(tmp_path):
    write_cifar(tmp_path / "cifar", "cifar10")
    spec = load_dataset("cifar10", root=tmp_path / "cifar").spec
    recorded = spec["root"]
    with pytest.raises(DataError) as info:
        dataset_from_spec(spec)
    message = str(info.value)
    assert f"records data root {recorded}" in message
    assert f"setting `data_root={recorded}`" in message
    assert dataset_from_spec(spec, root=recorded).spec == spec

    _, marker = write_crafted_cifar(tmp_path / "crafted")
    crafted = {**spec, "root": str(tmp_path / "crafted")}
    with pytest.raises(DataError, match="records data root"):
        dataset_from_spec(crafted)
    assert not marker.exists()
    # the user's root wins over the recorded one
    assert dataset_from_spec(crafted, root=recorded).spec == spec


def test_the_built_in_fashion_mnist_root_needs_no_confirmation(tmp_path, monkeypatch):
    """A fashion-mnist spec read without a root is read from the built-in folder; recording
    that folder names nothing the user did not get anyway, so it is not refused. Any other
    recorded folder is."""
    from test_data import fake_fashion, write_fashion

    import pytest_fa.training.data as data

    default = write_fashion(tmp_path / "built-in", fake_fashion(), compressed=True)
    monkeypatch.setattr(data, "FASHION_MNIST_ROOT", str(default))
    spec = load_dataset("fashion-mnist").spec
    assert spec["root"] == str(default)
    assert dataset_from_spec(spec).spec == spec
    other = write_fashion(tmp_path / "other", fake_fashion(seed=1), compressed=True)
    with pytest.raises(DataError, match=f"pass setting `data_root={other}`"):
        dataset_from_spec({**spec, "root": str(other)})


def test_fashion_mnist_is_read_from_the_idx_files_not_from_processed_pickles(tmp_path):
    """torchvision reads ``FashionMNIST/processed/*.pt`` instead of the idx files when both are
    there, with a plain ``torch.load`` in the versions pyproject admits; they are never read."""
    from test_data import fake_fashion, write_fashion

    arrays = fake_fashion()
    write_fashion(tmp_path / "FashionMNIST" / "raw", arrays, compressed=False)
    processed = tmp_path / "FashionMNIST" / "processed"
    processed.mkdir()
    for filename, count in (("training.pt", 12), ("test.pt", 6)):
        torch.save((torch.zeros(count, 28, 28, dtype=torch.uint8), torch.zeros(count, dtype=torch.int64)),
                   processed / filename)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


# --------------------------------------------------------------------------------------------
# through the plugin and fa-train


@pytest.fixture
def cifar_bundle(tmp_path):
    """A bundle trained on a tiny CIFAR-10 folder, its spec recording that folder."""
    write_cifar(tmp_path / "cifar", "cifar10", num_per_batch=16)
    data = load_dataset("cifar10", root=tmp_path / "cifar")
    result = train(data, "bp", arch_config={"d": 8, "depth": 2}, epochs=1, seed=0, monitor=False)
    path = save_bundle(tmp_path / "cifar.pt", result.bundle)
    return path, data.spec["root"]


def test_the_runner_reads_a_recorded_root_only_when_given(cifar_bundle):
    path, root = cifar_bundle
    with pytest.raises(DataError, match=f"pass setting `data_root={root}`"):
        ProtocolRunner(ProtocolSettings(device="cpu")).run(str(path))
    run = ProtocolRunner(ProtocolSettings(device="cpu", data_root=root)).run(str(path))
    assert run.data.spec["root"] == root and len(run.data.y_test) == 16


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def test_the_plugin_never_runs_a_crafted_batch(pytester, tmp_path, cifar_bundle):
    path, _ = cifar_bundle
    crafted_batch, marker = write_crafted_cifar(tmp_path / "crafted")
    bundle = torch.load(path, weights_only=True)
    bundle["data"]["root"] = str(tmp_path / "crafted")
    torch.save(bundle, tmp_path / "crafted.pt")

    result = pytester.runpytest("-p", "no:cacheprovider", "--fa-device=cpu", f"--fa-checkpoint={tmp_path / 'crafted.pt'}")
    text = output(result)
    assert not marker.exists()
    assert result.ret != pytest.ExitCode.OK
    assert f"records data root {tmp_path / 'crafted'}" in text, text[-3000:]
    assert f"--fa-data-root={tmp_path / 'crafted'}" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text

    result = pytester.runpytest("-p", "no:cacheprovider", "--fa-device=cpu", f"--fa-checkpoint={tmp_path / 'crafted.pt'}",
                                f"--fa-data-root={tmp_path / 'crafted'}")
    text = output(result)
    assert not marker.exists()
    assert result.ret != pytest.ExitCode.OK
    assert str(crafted_batch) in text and "not a CIFAR batch" in text and SYSTEM in text, text[-3000:]
    assert "Traceback" not in text and "INTERNALERROR" not in text


def test_fa_train_refuses_a_crafted_batch_before_training(tmp_path, capsys):
    crafted_batch, marker = write_crafted_cifar(tmp_path / "crafted")
    with pytest.raises(SystemExit) as info:
        main(["--data", "cifar10", "--data-root", str(tmp_path / "crafted"), "--epochs", "1",
              "--methods", "bp", "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "runs"), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(crafted_batch) in err and "not a CIFAR batch" in err and SYSTEM in err
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_a_crafted_batch_does_run_code_under_plain_pickle(tmp_path):
    """The crafted folder above is a real exploit: plain ``pickle.load`` runs its command."""
    crafted_batch, marker = write_crafted_cifar(tmp_path / "crafted")
    with open(crafted_batch, "rb") as handle:
        pickle.load(handle, encoding="latin1")
    assert marker.exists()
