"""The README's main job: bundled camera-trap clips -> feature store -> MAP head -> ethograms.

It runs the same library calls as `ethoprism extract`, `ethoprism probe train`, `probe predict`
and `probe eval`, on the two MammAlps clips and their transcribed labels in `data/`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.extract.encoder import default_preprocessing
from ethoprism.extract.weights import ENV_VAR, weights_available
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe import defaults
from ethoprism.probe.classify.jobs import evaluate_head, predict_store, train_probe

DATA = Path(__file__).resolve().parent.parent / "data"
VIDEOS = [DATA / "S1_C1_E115_V0342.mp4", DATA / "S2_C2_E394_V0135.mp4"]
LABELS = DATA / "labels_segments.csv"


@dataclass(frozen=True)
class EncoderChoice:
    model: str
    checkpoint: str | None
    real: bool  # False: random weights, the numbers mean nothing


def choose_encoder() -> EncoderChoice:
    """VideoPrism-B when its weights are on this machine, else the tiny encoder, random."""
    if os.environ.get(ENV_VAR) or weights_available("videoprism-b"):
        return EncoderChoice("videoprism-b", None, True)
    return EncoderChoice("videoprism-tiny", "random", False)


def check_out(out: str | os.PathLike) -> Path:
    """The demo's output folder, refused up front if it cannot be one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EthoprismError(f"--out {out} is a file; the demo writes a folder of results there")
    return out


def extract_stage(videos: list[str], store_path: str, cfg: RunConfig, reporter=None):
    """Extract (or resume) `videos` into the store; returns the run's result and the number of
    windows the store holds after it, earlier runs' included (a rerun encodes none)."""
    extraction = run_extract(videos, store_path, cfg, reporter=reporter)
    return extraction, store.open(store_path).sizes["window"]


def run_demo(
    out: str | os.PathLike,
    reporter=None,
    epochs: int = 30,
    stage: Callable[[str], None] = lambda _: None,
    training_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run the demo into `out`; `stage` hears each stage as it starts, `reporter` and
    `training_progress` the progress of extraction and training."""
    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    choice = choose_encoder()
    # Stride 4 gives the short wolf clip (110 frames) enough windows to learn from.
    cfg = RunConfig(
        model=choice.model,
        checkpoint=choice.checkpoint,
        prep=default_preprocessing(choice.model, window_stride=4),
    )
    store_path = str(out / "features.zarr")
    stage(f"extracting {len(VIDEOS)} videos with {choice.model} into {store_path}")
    extraction, store_windows = extract_stage([str(v) for v in VIDEOS], store_path, cfg, reporter)
    if hasattr(reporter, "stop"):
        reporter.stop()  # one live display at a time: training's comes next
    # Defaults throughout, as a user's first `probe train` would run: the learning rate is chosen
    # on validation windows, and since each behaviour is filmed in one video only, the split
    # holds out each behaviour's last windows in time (the metrics say what they were measured on).
    stage(f"training a MAP head for {epochs} epochs")
    training = train_probe(
        store_path,
        LABELS,
        out / "probe",
        label_column=defaults.LABEL_COLUMN,
        epochs=epochs,
        progress=training_progress,
    )
    head_dir = training["heads"][0]["dir"]
    stage("predicting per-frame ethograms")
    ethograms = predict_store(store_path, head_dir, out / "ethograms", labels=LABELS)
    stage("evaluating the head (on held-out windows)")
    metrics = evaluate_head(store_path, head_dir, LABELS, out / "metrics")
    return {
        "encoder": choice.__dict__,
        "store": store_path,
        "store_windows": store_windows,
        "extraction": extraction.to_dict(),
        "head": head_dir,
        "learning_rate": training["heads"][0]["learning_rate_choice"],
        "split": training["split_how"],
        "classes": training["classes"],
        "ethograms": ethograms["videos"],
        "metrics": metrics,
    }
