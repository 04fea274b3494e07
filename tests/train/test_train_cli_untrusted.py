"""Untrusted and broken inputs on the command line: nothing executed, nothing lost, one line and
exit 2 (and a traceback only for bugs)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
from train_helpers import one_line_error, one_line_usage_error, tiny_data, tiny_overrides, tiny_sets

from coupled_mamba.data import write_mmsa_pickle, write_npz_folder
from coupled_mamba.errors import UserInputError
from coupled_mamba.train import cli
from coupled_mamba.train.config import load_config
from coupled_mamba.train.run import train_run

MMSA_NAMES = ("text", "audio", "vision")


class _Payload:
    """Unpickling it calls os.system, which would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _mmsa_pickle(path, **kw):
    return write_mmsa_pickle(tiny_data("regression", dims=(3, 5, 2), names=MMSA_NAMES, **kw),
                             path)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. pickles run no code ------------------------------------------------------------------

def test_pickle_payloads_are_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    out = tmp_path / "out"
    for argv in (["train", "--data", str(evil), "--out", str(out), *tiny_sets(epochs=1)],
                 ["convert", "--mmsa", str(evil), "--out", str(out)]):
        one_line_error(capsys, argv, str(evil), "system'", "--trust-pickle")
    # A valid MMSA pickle carrying one extra malicious object.
    good = _mmsa_pickle(tmp_path / "mosi.pkl")
    with open(good, "rb") as f:
        obj = pickle.load(f)
    obj["train"]["extra"] = _Payload(marker)
    evil.write_bytes(pickle.dumps(obj))
    one_line_error(capsys, ["train", "--data", str(evil), "--out", str(out),
                            *tiny_sets(epochs=1)], "system'", "--trust-pickle")
    assert not marker.exists() and not out.exists()


def test_trust_pickle_reads_what_the_allowlist_refuses(tmp_path, capsys):
    import torch

    data = tiny_data("regression", dims=(3, 5, 2), names=MMSA_NAMES)
    path = write_mmsa_pickle(data, tmp_path / "mosi.pkl")
    with open(path, "rb") as f:
        obj = pickle.load(f)
    obj["train"]["audio"] = torch.from_numpy(obj["train"]["audio"])  # MMSA-FET return_type='pt'
    path.write_bytes(pickle.dumps(obj))
    one_line_error(capsys, ["convert", "--mmsa", str(path), "--out", str(tmp_path / "a")],
                   "torch", "--trust-pickle")
    assert cli.main(["convert", "--mmsa", str(path), "--out", str(tmp_path / "b"),
                     "--trust-pickle"]) == 0
    with np.load(tmp_path / "b" / "train.npz") as z:
        np.testing.assert_array_equal(z["audio"], data.train.modalities["audio"])


# ---- 2. broken files and bad paths: one line, exit 2 ---------------------------------------

def _flip_crc(folder):
    """Flip the last byte of the labels stored in train.npz (the zip's CRC no longer matches)."""
    path = folder / "train.npz"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("labels.npy")
    raw = bytearray(path.read_bytes())
    # Local file header: 30 fixed bytes, then the name and the extra field (lengths at 26, 28).
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    raw[info.header_offset + 30 + name_len + extra_len + info.compress_size - 1] ^= 0xFF
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("case", ["npz_crc", "pickle_truncated", "pickle_garbage",
                                  "hdf5_garbage", "out_is_a_file"])
def test_broken_inputs_are_one_line(tmp_path, capsys, case):
    out = tmp_path / "run"
    if case == "npz_crc":
        data = tmp_path / "d"
        write_npz_folder(tiny_data("regression"), data)
        named = f"{_flip_crc(data)} (split 'train'), key 'labels': damaged array (BadZipFile"
    elif case.startswith("pickle"):
        data = named = _mmsa_pickle(tmp_path / "mosi.pkl")
        raw = data.read_bytes()
        data.write_bytes(raw[: len(raw) // 2] if case == "pickle_truncated" else b"not a pickle")
        one_line_error(capsys, ["convert", "--mmsa", str(data), "--out", str(tmp_path / "c")],
                       str(data), "not a readable pickle")
    elif case == "hdf5_garbage":
        data = named = tmp_path / "multimodal_imdb.hdf5"
        data.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    else:
        write_npz_folder(tiny_data("regression"), tmp_path / "d")
        data, named = tmp_path / "d", f"--out {out}: exists and is not a folder"
        out.write_text("my notes")
    one_line_error(capsys, ["train", "--data", str(data), "--out", str(out), "--quiet",
                            *tiny_sets(epochs=1)], str(named))
    if case == "out_is_a_file":
        assert out.read_text() == "my notes"


def test_non_finite_loss_names_the_data_and_row(tmp_path, capsys):
    data = tiny_data("regression")
    data.train.modalities["m1"][7] = 3e38  # finite, but squares overflow in float32
    folder = tmp_path / "huge"
    write_npz_folder(data, folder)
    # Standardised inputs would absorb the outlier; raw ones reach the model as they are.
    code = cli.main(["train", "--data", str(folder), "--out", str(tmp_path / "r"), "--quiet",
                     "--set", "data.standardize=false", *tiny_sets(epochs=1)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any("Traceback" in line for line in err)
    errors = [line for line in err if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err[-1], err
    for word in (str(folder), "non-finite training loss", "3e+38", "'m1'", "'tr7'"):
        assert word in errors[0], (word, errors[0])


def test_demo_rejects_non_positive_counts(capsys):
    one_line_usage_error(capsys, ["demo", "--threads", "0"], "--threads", "positive integer")
    one_line_usage_error(capsys, ["demo", "--epochs", "0"], "--epochs", "positive integer")


def test_internal_value_error_keeps_its_traceback(tmp_path, monkeypatch, npz_data):
    """Only UserInputError (and the OS errors of bad paths) are reported as bad input."""
    import coupled_mamba.train.run as run_mod

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(run_mod, "train_run", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["train", "--data", npz_data(), "--out", str(tmp_path / "r")])
    assert not issubclass(ValueError, UserInputError)


# ---- 3. --overwrite leaves only the new run ------------------------------------------------

def test_overwrite_removes_the_previous_run(tmp_path, npz_data, capsys):
    data, run = npz_data(), tmp_path / "run"
    assert cli.main(["train", "--data", data, "--out", str(run), "--seeds", "3", "--quiet",
                     *tiny_sets(epochs=1)]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--data", data]) == 0
    (run / "notes.txt").write_text("mine")
    assert cli.main(["train", "--data", data, "--out", str(run), "--overwrite", "--quiet",
                     *tiny_sets(epochs=1)]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "data.json", "metrics.json",
                                                     "notes.txt", "seed_1111"]
    assert cli.main(["evaluate", "--run", str(run), "--data", data]) == 0
    assert list(json.loads((run / "evaluate_test.json").read_text())["per_seed"]) == ["1111"]


# ---- 4. --resume checks the data -----------------------------------------------------------

def test_resume_refuses_other_data(tmp_path, capsys):
    a, same_shape, other_dims = (tmp_path / n for n in ("a", "same_shape", "other_dims"))
    write_npz_folder(tiny_data("regression", seed=0), a)
    write_npz_folder(tiny_data("regression", seed=1), same_shape)
    write_npz_folder(tiny_data("regression", dims=(3, 4)), other_dims)
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(a), "--out", str(run), "--quiet",
                     *tiny_sets(epochs=1)]) == 0
    before = _files(run)
    argv = ["--out", str(run), "--resume", "--quiet", *tiny_sets(epochs=1)]
    one_line_error(capsys, ["train", "--data", str(same_shape), *argv],
                   str(same_shape), "not the data", "other values", "--overwrite")
    one_line_error(capsys, ["train", "--data", str(other_dims), *argv],
                   "'m1': shape (40, 6, 5) float32 -> shape (40, 6, 4) float32")
    assert _files(run) == before  # config.yaml and metrics.json not rewritten
    # The same data moved elsewhere resumes (data.path may change).
    moved = tmp_path / "moved"
    a.rename(moved)
    assert cli.main(["train", "--data", str(moved), *argv]) == 0


# ---- 5. convert does not destroy a folder --------------------------------------------------

def test_convert_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "npz"
    assert cli.main(["convert", "--mmsa", str(_mmsa_pickle(tmp_path / "full.pkl")), "--out",
                     str(out)]) == 0
    no_valid = _mmsa_pickle(tmp_path / "no_valid.pkl", valid=False)
    before = _files(out)
    one_line_error(capsys, ["convert", "--mmsa", str(no_valid), "--out", str(out)],
                   str(out), "not empty", "valid.npz", "--force")
    assert _files(out) == before
    assert cli.main(["convert", "--mmsa", str(no_valid), "--out", str(out), "--force"]) == 0
    assert not (out / "valid.npz").exists()


# ---- 6. the smaller defects ----------------------------------------------------------------

def test_interrupted_run_refusal_offers_overwrite(tmp_path, npz_data, capsys):
    data, run = npz_data(), tmp_path / "run"

    def crash(trainer, epoch, row):
        raise RuntimeError("power cut")

    cfg = load_config(None, tiny_overrides(epochs=2), {"data.path": data})
    with pytest.raises(RuntimeError, match="power cut"):
        train_run(cfg, run, callbacks=[crash])
    one_line_error(capsys, ["train", "--data", data, "--out", str(run), *tiny_sets(epochs=2)],
                   "unfinished run", "--resume", "--overwrite")
    assert cli.main(["train", "--data", data, "--out", str(run), "--overwrite", "--quiet",
                     *tiny_sets(epochs=2)]) == 0
    assert (run / "metrics.json").is_file()


def test_select_on_an_undefined_metric_is_an_error(tmp_path, capsys):
    data = tiny_data("regression")
    data.valid.labels[:] = 0.5  # a constant target: Corr is NaN for any prediction
    write_npz_folder(data, tmp_path / "d")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                            *tiny_sets(epochs=1, select_on="Corr")],
                   "train.select_on 'Corr'", "undefined (NaN)")
    assert not (tmp_path / "r").exists()


def test_unbuildable_model_fails_before_writing(tmp_path, npz_data, capsys):
    """An error only the model's constructor sees is still bad input, found before any write."""
    out = tmp_path / "r"
    one_line_error(capsys, ["train", "--data", npz_data(), "--out", str(out), "--model",
                            "cross_attention", "--set", "model.n_heads=3", *tiny_sets(epochs=1)],
                   "n_heads", "not divisible")
    assert not out.exists()
