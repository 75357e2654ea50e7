"""Loading official npz checkpoints: from a path, $ETHOPRISM_CHECKPOINT, the HF cache; every
refusal."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract import CONFIGS
from ethoprism.extract.models import load_encoder
from ethoprism.extract.weights import load_checkpoint, weights_available

CHECKPOINT = Path(__file__).parent.parent / "data" / "golden" / "checkpoint.npz"
TINY = CONFIGS["videoprism-tiny"]
BASE = CONFIGS["videoprism-b"]
QUERY = "params/spatial_encoder/transformers_stack/x_layers/self_attention/query/w"


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(CHECKPOINT) as f:
        return dict(f)


def write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


class Touch:
    """Unpickling this creates the file: proof that a loader unpickled something."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_load_from_path_records_sha256(arrays):
    enc = load_encoder("videoprism-tiny", checkpoint=CHECKPOINT)
    assert enc.checkpoint_sha256 == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    got = enc.params["params"]["spatial_encoder"]["transformers_stack"]["x_layers"][
        "self_attention"
    ]["query"]["w"]
    np.testing.assert_array_equal(got, arrays[QUERY])


def test_load_via_environment_variable(monkeypatch, tmp_path, arrays):
    copy = shutil.copy(CHECKPOINT, tmp_path / "weights.npz")
    monkeypatch.setenv("ETHOPRISM_CHECKPOINT", str(copy))
    enc = load_encoder("videoprism-tiny")
    assert enc.checkpoint_sha256 == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    monkeypatch.setenv("ETHOPRISM_CHECKPOINT", str(tmp_path / "nowhere.npz"))
    with pytest.raises(EthoprismError, match="ETHOPRISM_CHECKPOINT points at .*nowhere.npz"):
        load_encoder("videoprism-tiny")


def test_missing_path_says_how_to_get_weights(tmp_path):
    with pytest.raises(EthoprismError, match="nope.npz does not exist.*ETHOPRISM_CHECKPOINT") as e:
        load_encoder("videoprism-b", checkpoint=tmp_path / "nope.npz")
    assert "huggingface.co/google/videoprism-base-f16r288" in str(e.value)


def test_missing_key(tmp_path, arrays):
    path = write_npz(tmp_path / "m.npz", {k: v for k, v in arrays.items() if k != QUERY})
    with pytest.raises(
        EthoprismError,
        match=rf"missing key {QUERY} \(expected shape \(2, 64, 4, 16\), found none\)",
    ):
        load_checkpoint(path, TINY)


def test_extra_key(tmp_path, arrays):
    path = write_npz(tmp_path / "x.npz", {**arrays, "params/extra/w": np.zeros((3, 5), np.float32)})
    with pytest.raises(EthoprismError, match=r"unexpected key params/extra/w with shape \(3, 5\)"):
        load_checkpoint(path, TINY)


def test_wrong_shape(tmp_path, arrays):
    path = write_npz(tmp_path / "s.npz", {**arrays, QUERY: arrays[QUERY][:1]})
    with pytest.raises(
        EthoprismError,
        match=rf"key {QUERY} has shape \(1, 64, 4, 16\), videoprism-tiny expects \(2, 64, 4, 16\)",
    ):
        load_checkpoint(path, TINY)


def test_tiny_checkpoint_refused_for_base_config():
    with pytest.raises(
        EthoprismError, match=r"does not match videoprism-b: key .* has shape .*expects"
    ):
        load_checkpoint(CHECKPOINT, BASE)


def test_pickled_array_inside_npz_is_not_unpickled(tmp_path, arrays):
    marker = tmp_path / "unpickled"
    bad = np.empty(1, dtype=object)
    bad[0] = Touch(marker)
    path = write_npz(tmp_path / "p.npz", {**arrays, QUERY: bad})
    with pytest.raises(EthoprismError, match=f"key {QUERY} holds pickled objects; refusing"):
        load_checkpoint(path, TINY)
    assert not marker.exists()


def test_pickle_file_is_not_unpickled(tmp_path, arrays):
    marker = tmp_path / "unpickled"
    path = tmp_path / "weights.npz"
    path.write_bytes(pickle.dumps({"params": arrays, "evil": Touch(marker)}))
    with pytest.raises(EthoprismError, match="is a Python pickle; refusing to unpickle"):
        load_encoder("videoprism-tiny", checkpoint=path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "npy", "truncated", "empty"])
def test_not_an_npz(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3, np.float32))
    elif kind == "truncated":
        path.write_bytes(CHECKPOINT.read_bytes()[: CHECKPOINT.stat().st_size // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(
        EthoprismError, match=f"checkpoint {path} is (not an npz|a single .npy|a damaged npz)"
    ):
        load_checkpoint(path, TINY)


def test_damaged_member(tmp_path, arrays):
    path = write_npz(tmp_path / "d.npz", arrays)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("params/junk.npy", b"\x93NUMPY not really")
    with pytest.raises(
        EthoprismError, match=f"checkpoint {path}: key params/junk is not a readable array"
    ):
        load_checkpoint(path, TINY)


def test_no_published_weights_for_tiny(monkeypatch):
    monkeypatch.delenv("ETHOPRISM_CHECKPOINT", raising=False)
    with pytest.raises(
        EthoprismError, match="videoprism-tiny has no published weights.*checkpoint='random'"
    ):
        load_encoder("videoprism-tiny")


def test_unknown_model():
    with pytest.raises(
        EthoprismError, match="unknown encoder 'videoprism-xl'; known: videoprism-b"
    ):
        load_encoder("videoprism-xl")


def _offline(tmp_path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with an empty Hugging Face home and the hub offline."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("ETHOPRISM_CHECKPOINT", None)
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_offline_without_cache_then_with_cached_file(tmp_path):
    code = """
from ethoprism.errors import EthoprismError
from ethoprism.extract.models import load_encoder
from ethoprism.extract.weights import weights_available
print("available:", weights_available("videoprism-b"))
try:
    load_encoder("videoprism-b")
except EthoprismError as e:
    print("error:", e)
"""
    out = _offline(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert "available: None" in out.stdout
    error = out.stdout.split("error:", 1)[1]
    for needle in (
        "flax_base_f16r288_repeated.npz",
        "https://huggingface.co/google/videoprism-base-f16r288",
        "checkpoint=PATH",
        "--checkpoint PATH",
        "ETHOPRISM_CHECKPOINT=PATH",
    ):
        assert needle in error, needle

    # The same file placed in the hub cache layout is found offline (and checked against the
    # config).
    snapshot = tmp_path / "hf" / "hub" / "models--google--videoprism-base-f16r288"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    cached = snapshot / "snapshots" / ("0" * 40) / "flax_base_f16r288_repeated.npz"
    shutil.copy(CHECKPOINT, cached)
    out = _offline(tmp_path, code)
    assert f"available: {cached}" in out.stdout
    assert f"error: checkpoint {cached} does not match videoprism-b" in out.stdout


def test_weights_available_without_hub_repo():
    assert weights_available("videoprism-tiny") is None
