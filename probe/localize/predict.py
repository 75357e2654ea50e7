"""Boxes from a trained detector: for annotated frames or every frame of a video, as CSV and COCO
results JSON, and a PNG strip of frames with their boxes drawn."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe.localize import annotations as ann_io
from ethoprism.probe.localize import boxes as box_ops
from ethoprism.probe.localize import features, saved
from ethoprism.probe.localize.model import Detector, peaks, select

BATCH = 32  # frames per forward pass (fixed: one compilation)
CSV_HEADER = ("video", "frame", "class", "score", "x", "y", "w", "h")


@dataclass(frozen=True)
class Detection:
    video: str
    frame: int
    label: str
    score: float
    xywh: tuple[float, float, float, float]  # original pixels


def open_for(store_path: str, detector_dir: str):
    """The store and the detector, checked to belong together."""
    ds = store.open(store_path)
    features.check_layout(ds)
    det = saved.load(detector_dir)
    saved.check_store(det, ds, str(detector_dir))
    return ds, det


def make_forward(det: saved.SavedDetector, frame_size: int):
    model = Detector(det.config)
    k = det.config.max_detections

    @jax.jit
    def forward(params, tokens):
        outputs, _ = model.apply({"params": params}, tokens)
        return peaks(outputs, frame_size, k)

    return forward


def detect(ds, det: saved.SavedDetector, frames: list[tuple[str, int]], progress=None):
    """Detections (original pixels, clipped to the frame) for each (video, frame)."""
    prep = ds.attrs["preprocessing"]
    size, mode = int(prep["frame_size"]), prep["resize"]
    videos = features.video_table(ds)
    refs = features.locate(ds, frames)
    forward = make_forward(det, size)
    out: list[Detection] = []
    for lo in range(0, len(frames), BATCH):
        index = np.arange(lo, min(lo + BATCH, len(frames)))
        tokens = features.read_maps(ds, refs, index)
        pad = np.zeros((BATCH - len(index), *tokens.shape[1:]), tokens.dtype)
        scores, classes, boxes = jax.device_get(forward(det.params, np.concatenate([tokens, pad])))
        for row, k in enumerate(index):
            video, frame = frames[k]
            v = videos[video]
            s, c, b = select(det.config, scores[row], classes[row], boxes[row], size)
            b = box_ops.clip(
                box_ops.to_original(b, v["width"], v["height"], size, mode), v["width"], v["height"]
            )
            out += [
                Detection(video, frame, det.classes[ci], float(si), tuple(map(float, bi)))
                for si, ci, bi in zip(s, c, b, strict=True)
                if bi[2] > 0 and bi[3] > 0
            ]
        if progress is not None:
            progress(int(index[-1]) + 1, len(frames))
    return out


def write_csv(dets: list[Detection], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for d in dets:
            w.writerow([d.video, d.frame, d.label, f"{d.score:.6f}", *(f"{v:.3f}" for v in d.xywh)])


def image_ids(frames: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """COCO image ids of annotated frames: 1, 2, ... in (video, frame) order."""
    return {key: i + 1 for i, key in enumerate(sorted(frames))}


def coco_results(dets: list[Detection], frames, classes: list[str]) -> list[dict]:
    """COCO results entries (image_id, category_id, bbox, score) plus video, frame and class."""
    ids = image_ids(frames)
    return [
        {
            "image_id": ids[(d.video, d.frame)],
            "category_id": classes.index(d.label) + 1,
            "bbox": [round(v, 3) for v in d.xywh],
            "score": round(d.score, 6),
            "video": d.video,
            "frame": d.frame,
            "class": d.label,
        }
        for d in dets
    ]


def draw_strip(video_path: str, dets: list[Detection], frames: list[int], out: str) -> None:
    """PNG of `frames` of the video side by side with their detections drawn."""
    import av
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    wanted, images = set(frames), {}
    try:
        with av.open(video_path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    images[i] = frame.to_ndarray(format="rgb24")
                if i >= max(frames):
                    break
    except (OSError, av.FFmpegError) as e:
        raise EthoprismError(f"{video_path}: cannot read frames for the strip: {e}") from None
    fig = Figure(figsize=(2.4 * len(frames), 2.6))
    colours = {}
    for k, f in enumerate(frames):
        ax = fig.add_subplot(1, len(frames), k + 1)
        ax.set_axis_off()
        ax.set_title(f"frame {f}", fontsize=8)
        if f not in images:
            continue
        ax.imshow(images[f])
        for d in (d for d in dets if d.frame == f and d.score >= 0.3):
            colour = colours.setdefault(d.label, f"C{len(colours)}")
            x, y, w, h = d.xywh
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1.2))
            ax.text(x, y, f"{d.label} {d.score:.2f}", color=colour, fontsize=6, va="bottom")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def predict_video(
    store_path: str, detector_dir: str, video: str, out_dir: str, strip: int = 8, progress=None
) -> dict:
    """Boxes for every frame of `video` (CSV and COCO results JSON) and a PNG strip."""
    ds, det = open_for(store_path, detector_dir)
    videos = features.video_table(ds)
    name = os.path.basename(video)
    if name not in videos:
        raise EthoprismError(
            f"video {name!r} is not a complete video of {store_path} "
            f"(it has {', '.join(sorted(videos)) or 'none'})"
        )
    n = videos[name]["n_frames"]
    frames = [(name, f) for f in range(n)]
    dets = detect(ds, det, frames, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(dets, out / "boxes.csv")
    (out / "detections.json").write_text(json.dumps(coco_results(dets, frames, det.classes)))
    shown = sorted({int(f) for f in np.linspace(0, n - 1, min(strip, n))})
    path = videos[name]["path"]
    if not os.path.exists(path) and os.path.exists(video):
        path = video  # the store's path is relative to elsewhere; the user named the file
    draw_strip(path, dets, shown, str(out / "strip.png"))
    return {
        "video": name,
        "frames": n,
        "detections": len(dets),
        "files": [str(out / f) for f in ("boxes.csv", "detections.json", "strip.png")],
    }


def predict_annotated(
    store_path: str, detector_dir: str, annotations: str, out_dir: str, class_field="species"
) -> dict:
    """Boxes for the frames an annotation file names (CSV and COCO results JSON)."""
    ds, det = open_for(store_path, detector_dir)
    ann = ann_io.check_videos(ann_io.read(annotations, class_field), features.video_table(ds))
    dets = detect(ds, det, ann.frames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(dets, out / "boxes.csv")
    (out / "detections.json").write_text(json.dumps(coco_results(dets, ann.frames, det.classes)))
    return {"frames": len(ann.frames), "detections": len(dets), "out": str(out)}
