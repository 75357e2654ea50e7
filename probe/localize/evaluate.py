"""COCO evaluation of a detector through pycocotools: AP@[.5:.95], AP50, AP75 and the
precision-recall curves at IoU 0.5 and 0.75 (the paper's Table 5 and Fig. 7)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from ethoprism.probe.localize import annotations as ann_io
from ethoprism.probe.localize import features, predict


def ground_truth(ann: ann_io.Annotations, classes: list[str], videos: dict[str, dict]) -> dict:
    """A COCO ground-truth dataset of the annotated frames (image ids as `predict.image_ids`)."""
    ids = predict.image_ids(ann.frames)
    images = [
        {
            "id": i,
            "width": videos[v]["width"],
            "height": videos[v]["height"],
            "video": v,
            "frame": f,
        }
        for (v, f), i in ids.items()
    ]
    boxes = [
        {
            "id": k + 1,
            "image_id": ids[(b.video, b.frame)],
            "category_id": classes.index(b.label) + 1,
            "bbox": list(b.xywh),
            "area": float(b.xywh[2] * b.xywh[3]),
            "iscrowd": 0,
        }
        for k, b in enumerate(ann.boxes)
    ]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    return {"images": images, "annotations": boxes, "categories": categories}


def coco_eval(gt: dict, results: list[dict]):
    """pycocotools' COCOeval over `results`, evaluated and accumulated (its printing muted)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        if results:
            dt = coco.loadRes(results)
        else:  # loadRes cannot take an empty list: no detection at all scores 0
            dt = COCO()
            dt.dataset = {**coco.dataset, "annotations": []}
            dt.createIndex()
        e = COCOeval(coco, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def pr_curve(e, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at IoU `iou`, all areas, 100 detections, averaged over classes."""
    t = int(np.argmin(np.abs(e.params.iouThrs - iou)))
    p = e.eval["precision"][t, :, :, 0, -1]  # (recall thresholds, classes)
    p = np.where(p < 0, np.nan, p)
    with np.errstate(all="ignore"), contextlib.suppress(RuntimeWarning):
        mean = np.nanmean(p, axis=1) if p.size else np.zeros(0)
    return e.params.recThrs, np.nan_to_num(mean)


def plot_pr(e, out: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    for k, iou in enumerate((0.5, 0.75)):
        ax = fig.add_subplot(1, 2, k + 1)
        recall, precision = pr_curve(e, iou)
        ax.plot(recall, precision)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"IoU {iou}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def evaluate(
    store_path: str, detector_dir: str, annotations: str, out_dir: str, class_field="species"
) -> dict:
    """Detect on the annotated frames and score with pycocotools; writes detections.json,
    ground_truth.json, pr_curves.png and metrics.json into `out_dir`."""
    ds, det = predict.open_for(store_path, detector_dir)
    videos = features.video_table(ds)
    ann = ann_io.check_videos(ann_io.read(annotations, class_field), videos)
    ann_io.check_classes(ann, det.classes)
    dets = predict.detect(ds, det, ann.frames)
    results = predict.coco_results(dets, ann.frames, det.classes)
    gt = ground_truth(ann, det.classes, videos)
    e = coco_eval(gt, results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(json.dumps(results))
    (out / "ground_truth.json").write_text(json.dumps(gt))
    plot_pr(e, str(out / "pr_curves.png"))
    metrics = {
        "AP": float(e.stats[0]),
        "AP50": float(e.stats[1]),
        "AP75": float(e.stats[2]),
        "frames": len(ann.frames),
        "boxes": len(ann.boxes),
        "detections": len(dets),
        "classes": det.classes,
        "warnings": ann.warnings,
        "files": [str(out / f) for f in ("detections.json", "ground_truth.json", "pr_curves.png")],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
