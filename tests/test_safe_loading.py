"""No code runs from data: a planted checkpoint or CIFAR batch file is refused before any of it runs (the trial
that would resume the checkpoint ends FAILED naming it; the CIFAR file stops the command with exit 2), the CIFAR
release's own files still load, and the package loads nothing with an unrestricted unpickler."""

import ast
import json
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dinolab.config import ConfigError
from dinolab.data.datasets import build_dataset, check_data
from dinolab.track.reporter import MemoryReporter
from dinolab.train import checkpoint as ckpt
from dinolab.train import faults
from dinolab.train.loop import train
from dinolab.trial import run_trial
from test_data_datasets import _assert_config_error, cfg as data_cfg, make_cifar10

PACKAGE = Path(__file__).resolve().parents[1] / "platform/dinolab"


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path: Path, marker: Path, how: str) -> None:
    """A crafted epoch checkpoint: a plain pickle, as the issue planted it, or a torch.save zip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "student": Payload(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)


def load_unrestricted(path: Path, how: str) -> None:
    """The positive control: how the file would be read without weights_only (what dinolab did before)."""
    if how == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tiny_config, tmp_path, how):
    marker = tmp_path / "executed"
    planted = tmp_path / "trial/checkpoints/epoch_0000.pt"
    plant(planted, marker, how)

    with pytest.raises(ckpt.UnsafeCheckpoint) as refused:
        ckpt.load_checkpoint(planted)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and str(planted) in message and "checkpoints upgrade" in message
    cfg = tiny_config()
    with pytest.raises(ckpt.UnsafeCheckpoint):
        train(cfg, MemoryReporter(), workdir=tmp_path / "trial")  # resuming the trial refuses it too
    assert not marker.exists()

    load_unrestricted(planted, how)
    assert marker.exists()  # the payload does run when unpickled without restriction: the test can fail


def test_trial_resuming_a_crafted_checkpoint_fails_cleanly(tiny_config, store, tmp_path, monkeypatch):
    cfg = tiny_config(f"tracking.uri={store}")
    monkeypatch.setenv(faults.ENV, json.dumps({cfg.name: 0}))
    first = run_trial(cfg, storage=tmp_path / "storage")  # an unfinished trial, to be resumed
    assert first.status == "FAILED" and "InjectedFault" in first.reason
    marker = tmp_path / "executed"
    planted = first.workdir / "checkpoints/epoch_0000.pt"
    plant(planted, marker, "torch.save")

    second = run_trial(cfg, storage=tmp_path / "storage")
    assert second.run_id == first.run_id and second.status == "FAILED"
    assert str(planted) in second.reason and "refused" in second.reason and "\n" not in second.reason
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- CIFAR


class Python2Pickler(pickle._Pickler):
    """What Python 2's cPickle wrote for the CIFAR release (protocol 2): every string a Python 2 str
    (SHORT_BINSTRING / BINSTRING opcodes) and numpy's array reconstruction under numpy 1's numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        short = len(data) < 256
        self.write((pickle.SHORT_BINSTRING + bytes([len(data)])) if short else (pickle.BINSTRING + struct.pack("<i", len(data))))
        self.write(data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


# writer -> bytes its files must hold (so each case reads what it claims to)
WRITERS = {
    "python2": b"cnumpy.core.multiarray\n_reconstruct\n",  # the original release
    "protocol2": b"c_codecs\nencode\n",  # Python 3, protocol 2: bytes through _codecs.encode
    "protocol5": b"_frombuffer",  # Python 3.14's default protocol: numpy's out-of-band-capable form
}


def write_release(root: Path, writer: str, per_batch: int = 4) -> list[np.ndarray]:
    """cifar-10-batches-py as the release lays it out, written by ``writer``; returns each batch's data rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)

    def dump(obj, name):
        with open(folder / name, "wb") as f:
            if writer == "python2":
                Python2Pickler(f, protocol=2).dump(obj)
            else:
                pickle.dump(obj, f, protocol=int(writer[-1]))

    rows = []
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        rows.append(rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8))
        dump({"batch_label": f"training batch {k + 1} of 5", "labels": [(k + j) % 10 for j in range(per_batch)],
              "data": rows[-1], "filenames": [f"img_{k}_{j}.png" for j in range(per_batch)]}, name)
        assert WRITERS[writer] in (folder / name).read_bytes()
    dump({"num_cases_per_batch": per_batch, "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                             "frog", "horse", "ship", "truck"], "num_vis": 3072}, "batches.meta")
    return rows


@pytest.mark.parametrize("writer", list(WRITERS))
def test_cifar_release_layout_loads(tmp_path, writer):
    rows = write_release(tmp_path, writer)
    c = data_cfg("cifar10", tmp_path)
    check_data(c)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert len(train) == 20 and len(test) == 4 and train.classes[-1] == "truck"
    # (N, 3*32*32) channel-major rows -> (N, 32, 32, 3) images, byte for byte
    assert np.array_equal(train.data, np.concatenate(rows[:5]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(test.data, rows[5].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.targets[:4] == [0, 1, 2, 3] and test.targets == [5, 6, 7, 8]


def test_crafted_cifar_batch_is_refused_and_runs_nothing(tiny_experiment, tmp_path, capsys):
    from dinolab.cli import main

    root = make_cifar10(tmp_path / "c10")
    bad = root / "cifar-10-batches-py/data_batch_2"
    marker = tmp_path / "executed"
    bad.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}))

    _assert_config_error(data_cfg("cifar10", root), str(bad), "system", "refused")  # the data check before a trial
    with pytest.raises(ConfigError, match="data_batch_2"):
        build_dataset(data_cfg("cifar10", root), "train")  # and at load
    assert main(["run", str(tiny_experiment), "--set", "data.name=cifar10", "--set", f"data.root={root}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(bad) in err[0], err
    assert not marker.exists()

    with open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()  # the payload does run through plain pickle.load: the test can fail


def test_cifar_array_of_objects_is_refused(tmp_path):
    root = make_cifar10(tmp_path)
    bad = root / "cifar-10-batches-py/test_batch"
    bad.write_bytes(pickle.dumps({"data": np.array([1, "x"], dtype=object), "labels": [0, 1]}))
    _assert_config_error(data_cfg("cifar10", root), str(bad), "dtype 'O8'")


# -------------------------------------------------------------------------------------------- the package


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """pickle.load/loads/Unpickler(...), torch.load without weights_only=True, np.load(allow_pickle=True),
    weights_only=False anywhere."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        if any(k == "weights_only" and isinstance(v, ast.Constant) and v.value is False for k, v in kwargs.items()):
            found.append(f"{node.lineno}: weights_only=False")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads"):
            found.append(f"{node.lineno}: {name}")
        if name == "torch.load" and not (isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and "allow_pickle" in kwargs:
            found.append(f"{node.lineno}: {name}(allow_pickle=...)")
    return found


def test_package_loads_nothing_with_an_unrestricted_unpickler():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        bad = _unsafe_calls(ast.parse(path.read_text()))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    assert found == {}
    # The check itself finds what it forbids.
    sample = "import pickle, torch\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
    assert len(_unsafe_calls(ast.parse(sample))) == 4
