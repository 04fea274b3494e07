"""The restricted unpickler: real MMSA pickles load, pickles naming other globals run nothing."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from coupled_mamba.data import (
    DataFormatError,
    MultimodalData,
    Split,
    read_mmsa_pickle,
    write_mmsa_pickle,
)
from coupled_mamba.data._pickle import UnsafePickleError, load_pickle

_NUMPY_CORE_NAMES = ("numpy.core", "numpy._core")


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing numpy's core module under ``core_name`` (files made by
    numpy 1.x say ``numpy.core``, by numpy 2.x ``numpy._core``)."""

    def __init__(self, file, protocol, core_name):
        super().__init__(file, protocol)
        self.core_name = core_name

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        old = next((c for c in _NUMPY_CORE_NAMES if module.startswith(c + ".")), None)
        if old is None:
            return super().save_global(obj, name)
        module = self.core_name + module[len(old):]
        name = name or obj.__qualname__
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def _dump(obj, path, protocol, core_name):
    with open(path, "wb") as f:
        _Pickler(f, protocol, core_name).dump(obj)
    return path


def _mmsa_data(n=(6, 3, 4), L=5) -> MultimodalData:
    rng = np.random.default_rng(0)
    dims = {"text": 768, "audio": 5, "vision": 7}

    def split(k, tag):
        mods = {m: rng.normal(size=(k, L, d)).astype(np.float32) for m, d in dims.items()}
        lens = {m: rng.integers(1, L + 1, k) for m in dims}
        return Split(mods, lens, rng.uniform(-3, 3, k).astype(np.float32),
                     np.array([f"{tag}{i}" for i in range(k)]))

    return MultimodalData(split(n[0], "tr"), split(n[1], "va"), split(n[2], "te"),
                          list(dims), "regression", 1, "mosi", "mosi", "")


def test_own_writer_loads(tmp_path):
    data = _mmsa_data()
    back = read_mmsa_pickle(write_mmsa_pickle(data, tmp_path / "x.pkl"))
    for s, sp in data.splits().items():
        for m in data.modality_names:
            np.testing.assert_array_equal(back.splits()[s].modalities[m], sp.modalities[m])
        np.testing.assert_array_equal(back.splits()[s].ids, sp.ids)


@pytest.mark.parametrize("core_name", _NUMPY_CORE_NAMES)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_dump_of_numpy_arrays_loads(tmp_path, protocol, core_name):
    """What MMSA's files hold: dicts of numpy arrays (float, int, object ids, non-contiguous),
    numpy scalars, lists, strings; written at every protocol with either numpy module name."""
    rng = np.random.default_rng(1)
    split = {"text": rng.normal(size=(4, 6, 768)), "audio": rng.normal(size=(4, 9, 5)),
             "vision": np.asfortranarray(rng.normal(size=(4, 3, 7)).astype(np.float32)),
             "audio_lengths": [9, 4, 1, 7], "vision_lengths": np.array([3, 1, 2, 3]),
             "regression_labels": rng.uniform(-3, 3, 4),
             "id": np.array(["a$_$0", "a$_$1", "b$_$0", "b$_$1"], dtype=object),
             "raw_text": ["one", "two", "three", "four"], "scale": np.float32(2.5)}
    obj = {"train": split, "valid": split, "test": split,
           "config": {"seed": np.int64(3), "tags": {"a", "b"}, "raw": b"\x00\x01"}}
    path = _dump(obj, tmp_path / "mosi.pkl", protocol, core_name)
    raw = open(path, "rb").read()
    assert core_name.encode() in raw and (protocol == 2) == (b"_codecs" in raw)
    back = load_pickle(path)
    np.testing.assert_array_equal(back["train"]["vision"], split["vision"])
    assert back["train"]["id"].dtype == object and back["config"]["seed"] == 3
    assert back["config"]["tags"] == {"a", "b"} and back["config"]["raw"] == b"\x00\x01"
    data = read_mmsa_pickle(path, name="mosi")
    np.testing.assert_allclose(data.test.modalities["audio"], split["audio"], rtol=1e-6)


class _Payload:
    """Unpickling calls os.system, which would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to load the global "
                       r"'(posix|nt)\.system'.*--trust-pickle"):
        read_mmsa_pickle(evil)
    # A valid MMSA pickle with one extra malicious object: refused as a whole.
    obj = pickle.loads(pickle.dumps(_mmsa_as_dict()))
    obj["valid"]["extra"] = _Payload(marker)
    evil.write_bytes(pickle.dumps(obj))
    with pytest.raises(UnsafePickleError, match="system"):
        read_mmsa_pickle(evil)
    assert not marker.exists()


def _mmsa_as_dict():
    d = _mmsa_data()
    return {s: {"text": sp.modalities["text"], "audio": sp.modalities["audio"],
                "vision": sp.modalities["vision"], "regression_labels": sp.labels}
            for s, sp in d.splits().items()}


@pytest.mark.parametrize("content", [b"", b"\x80\x05", b"garbage", b"\x80\x04\x95\xff\xff",
                                     pickle.dumps({"train": np.zeros(3)})[:-9]])
def test_broken_pickles_are_format_errors(tmp_path, content):
    path = tmp_path / "broken.pkl"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=r"broken\.pkl: not a readable pickle"):
        load_pickle(path)


def test_trusted_load_resolves_any_global(tmp_path):
    path = tmp_path / "od.pkl"
    path.write_bytes(pickle.dumps({"x": range(3)}))  # builtins.range is not on the list
    with pytest.raises(UnsafePickleError, match="builtins.range"):
        load_pickle(path)
    assert load_pickle(path, trust=True) == {"x": range(3)}
