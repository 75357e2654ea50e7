"""VideoPrism weights: the official flat npz checkpoints, found locally or on the Hugging Face hub.

The official format is a plain `np.savez` of float arrays keyed by the flax variable path joined
with "/" (`params/spatial_encoder/transformers_stack/x_layers/...`, layers stacked on a leading
axis), which is exactly `FactorizedEncoder`'s variable tree. Files are never unpickled.
"""

from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ethoprism.errors import EthoprismError
from ethoprism.extract.encoder import EncoderConfig, get_config, param_shapes

ENV_VAR = "ETHOPRISM_CHECKPOINT"
RANDOM = "random"
RANDOM_SHA256 = "random-init-seed-0"
# How long the hub may take to accept a connection before the machine counts as offline: the
# hub client's own retries would otherwise spend ~30 s before failing.
ONLINE_CHECK_SECONDS = 2.0


class CheckpointError(EthoprismError):
    """A checkpoint that cannot be found, read, or does not fit the encoder config."""


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> str | os.PathLike | None:
    """The checkpoint to load: the one given, else $ETHOPRISM_CHECKPOINT if set (it must be a
    file), else None (the Hugging Face cache / download). Extraction and text search both ask
    here, so one variable picks the weights for both."""
    if checkpoint is None and os.environ.get(ENV_VAR):
        checkpoint = os.environ[ENV_VAR]
        if not Path(checkpoint).expanduser().is_file():
            raise CheckpointError(f"{ENV_VAR} points at {checkpoint}, which is not a file")
    return checkpoint


def _how_to_get(config: EncoderConfig) -> str:
    where = (
        f"download {config.hf_filename} from https://huggingface.co/{config.hf_repo}, then "
        if config.hf_repo
        else ""
    )
    return f"{where}pass checkpoint=PATH (CLI: --checkpoint PATH) or set {ENV_VAR}=PATH"


def download(config: EncoderConfig) -> Path:
    """The checkpoint from the Hugging Face cache, downloading it there if needed."""
    if config.hf_repo is None:
        raise CheckpointError(
            f"{config.name} has no published weights: pass checkpoint=PATH, "
            f"set {ENV_VAR}=PATH, or use checkpoint='random'"
        )
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    cached = weights_available(config.name)
    if cached is not None:
        return Path(cached)
    missing = f"weights for {config.name} ({config.hf_filename}) are not in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{missing} and HF_HUB_OFFLINE is set; {_how_to_get(config)}")
    unreachable = _unreachable(constants.ENDPOINT)
    if unreachable:
        raise CheckpointError(
            f"{missing} and this machine is offline ({unreachable}); {_how_to_get(config)}"
        )
    try:
        return Path(hf_hub_download(config.hf_repo, config.hf_filename))
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(
            f"{missing} and could not be downloaded from {constants.ENDPOINT}/{config.hf_repo} "
            f"({type(e).__name__}); {_how_to_get(config)}"
        ) from None


def _unreachable(endpoint: str) -> str | None:
    """Why `endpoint` cannot be reached within ONLINE_CHECK_SECONDS, or None if it can.

    The name lookup is inside the limit too (a resolver with no network can hang for longer),
    so the check runs in a daemon thread that is abandoned if it overruns.
    """
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    why: list[str] = ["timed out"]

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=ONLINE_CHECK_SECONDS).close()
            why[0] = ""
        except OSError as e:
            why[0] = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))

    check = threading.Thread(target=connect, daemon=True)
    check.start()
    check.join(ONLINE_CHECK_SECONDS + 0.2)
    return f"cannot connect to {host}:{port}: {why[0]}" if why[0] else None


def weights_available(name: str) -> str | None:
    """Path of the cached official checkpoint for `name`, or None (never touches the network)."""
    config = get_config(name)
    if config.hf_repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(config.hf_repo, config.hf_filename)
    return path if isinstance(path, str) else None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, refusing anything that would need unpickling."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(
            f"checkpoint {path} is a single .npy array, not an npz archive of named arrays"
        )
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"checkpoint {path} is a Python pickle; refusing to unpickle it "
            "(expected the official npz of float arrays)"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is not an npz archive (no zip structure)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):  # an object array: a pickle inside the archive
                        raise CheckpointError(
                            f"checkpoint {path}: key {key} holds pickled objects; "
                            "refusing to unpickle it (expected a float array)"
                        ) from None
                    raise CheckpointError(
                        f"checkpoint {path}: key {key} is not a readable array: {e}"
                    ) from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is a damaged npz archive: {e}") from None
    return arrays


def load_checkpoint(
    path: str | os.PathLike, config: EncoderConfig, shapes: dict | None = None
) -> dict:
    """The variables {"params": ...} of an official npz, checked key by key against `config`
    (or against `shapes`, the variable tree of another model around that encoder)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_how_to_get(config)}")
    arrays = _read_npz(path)
    shapes = shapes if shapes is not None else param_shapes(config)
    expected = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(shapes).items()}
    problems = [
        f"missing key {k} (expected shape {s}, found none)"
        for k, s in expected.items()
        if k not in arrays
    ]
    problems += [
        f"unexpected key {k} with shape {a.shape} (not in {config.name}: expected shape none)"
        for k, a in arrays.items()
        if k not in expected
    ]
    problems += [
        f"key {k} has shape {a.shape}, {config.name} expects {expected[k]}"
        for k, a in arrays.items()
        if k in expected and a.shape != expected[k]
    ]
    problems += [
        f"key {k} has dtype {a.dtype}, expected a float array"
        for k, a in arrays.items()
        if k in expected and not np.issubdtype(a.dtype, np.floating)
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise CheckpointError(f"checkpoint {path} does not match {config.name}: {shown}")
    # jnp.asarray copies: the official code mutates numpy params in place (spec §7).
    return unflatten_dict(
        {tuple(k.split("/")): jnp.asarray(a, jnp.float32) for k, a in arrays.items()}
    )
