"""Box annotations in three formats, read into one table of boxes per annotated frame.

- COCO JSON: `images` each name their video and frame (`video` or `video_name`, and `frame`,
  `frame_index` or `frame_id`), or are still images (`file_name` alone: frame 0 of that image
  file); `annotations[].bbox` is [x, y, w, h]; `categories` give the class names. An image with
  no annotation is an annotated frame with no animal.
- CSV: header `video,frame,track,class,x,y,w,h` (original pixels, top-left corner and size;
  `track` may be empty). A row with an empty class and box marks a frame with no animal. A
  still image is a video of one frame: its rows say frame 0.
- MammAlps per-frame JSON: `info.file_path` names the video, `frames[].frame_id` the frame,
  `frames[].detections[].bbox` is [x1, y1, x2, y2] and the class is a detection attribute
  (`species` by default).

Videos are matched by file name. Checked against the videos (frame counts and sizes): an unknown
video, a frame beyond the video's end, a still image given a frame other than 0, an empty or
negative box and a box wholly outside the frame are errors naming the file, row or id, and
field; a box partly outside the frame is clamped to it, with a warning naming it.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, replace

import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.probe.labels import still_frame_message
from ethoprism.probe.localize import boxes as box_ops

CSV_COLUMNS = ("video", "frame", "track", "class", "x", "y", "w", "h")


class AnnotationError(EthoprismError):
    """An annotation file that cannot be used; the message names file, row or id, and field."""


@dataclass(frozen=True)
class Box:
    video: str  # file name
    frame: int
    label: str
    xywh: tuple[float, float, float, float]  # original pixels
    track: int | None = None
    where: str = ""  # "FILE row N" / "FILE annotation id N", for messages


@dataclass
class Annotations:
    path: str
    frames: list[tuple[str, int]]  # every annotated (video, frame), sorted, boxes or not
    boxes: list[Box]
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({b.label for b in self.boxes})

    @property
    def videos(self) -> list[str]:
        return sorted({v for v, _ in self.frames})

    def frames_of(self, video: str) -> list[int]:
        return [f for v, f in self.frames if v == video]

    def by_frame(self) -> dict[tuple[str, int], list[Box]]:
        out: dict[tuple[str, int], list[Box]] = {key: [] for key in self.frames}
        for b in self.boxes:
            out[(b.video, b.frame)].append(b)
        return out


def read(path: str | os.PathLike, class_field: str = "species") -> Annotations:
    """Read COCO JSON, MammAlps JSON or CSV (by content); `class_field` is MammAlps' class."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the annotation file: {e.strerror}") from None
    if not text.strip():
        raise AnnotationError(f"{path}: the annotation file is empty")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: not valid JSON ({e})") from None
        if "images" in doc:
            ann = _read_coco(path, doc)
        elif "frames" in doc:
            ann = _read_mammalps(path, doc, class_field)
        else:
            raise AnnotationError(
                f"{path}: JSON with neither 'images' (COCO) nor 'frames' (MammAlps) at its top"
            )
    else:
        ann = _read_csv(path, text)
    if not ann.frames:
        raise AnnotationError(f"{path}: no annotated frame in the file")
    return ann


def _number(value, path: str, where: str, name: str, kind=float):
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise AnnotationError(
            f"{path} {where}: field {name!r} is {value!r}, not a number"
        ) from None
    if kind is float and not np.isfinite(out):
        raise AnnotationError(f"{path} {where}: field {name!r} is {value!r}, not a finite number")
    return out


def _box(path, where, video, frame, label, xywh, track) -> Box:
    x, y, w, h = (_number(v, path, where, n) for v, n in zip(xywh, "xywh", strict=True))
    if w <= 0 or h <= 0:
        raise AnnotationError(
            f"{path} {where}: box of video {video!r} frame {frame} has field "
            f"{'w' if w <= 0 else 'h'!r} = {w if w <= 0 else h}; width and height must be > 0"
        )
    return Box(video, frame, str(label), (x, y, w, h), track, f"{path} {where}")


def _finish(path: str, frames: set, boxes: list[Box]) -> Annotations:
    frames |= {(b.video, b.frame) for b in boxes}
    return Annotations(path, sorted(frames), boxes)


def _read_csv(path: str, text: str) -> Annotations:
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise AnnotationError(
            f"{path}: CSV header lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(CSV_COLUMNS)}"
        )
    frames, boxes = set(), []
    for n, row in enumerate(reader, start=2):  # row 1 is the header
        where = f"row {n}"
        video = os.path.basename((row["video"] or "").strip())
        if not video:
            raise AnnotationError(f"{path} {where}: field 'video' is empty")
        frame = _number(row["frame"], path, where, "frame", int)
        if frame < 0:
            raise AnnotationError(f"{path} {where}: field 'frame' is {frame}, must be >= 0")
        label = (row["class"] or "").strip()
        if not label and not any((row[c] or "").strip() for c in "xywh"):
            frames.add((video, frame))  # an annotated frame without animals
            continue
        if not label:
            raise AnnotationError(f"{path} {where}: field 'class' is empty")
        track = (row["track"] or "").strip()
        track = _number(track, path, where, "track", int) if track else None
        boxes.append(_box(path, where, video, frame, label, [row[c] for c in "xywh"], track))
    return _finish(path, frames, boxes)


def _read_coco(path: str, doc: dict) -> Annotations:
    categories = {c.get("id"): c.get("name") for c in doc.get("categories", [])}
    images = {}
    for img in doc.get("images", []):
        where = f"image id {img.get('id')}"
        video = img.get("video", img.get("video_name"))
        frame = next((img[k] for k in ("frame", "frame_index", "frame_id") if k in img), None)
        if video is None and frame is None and img.get("file_name"):  # a still image
            video, frame = img["file_name"], 0
        if video is None or frame is None:
            raise AnnotationError(
                f"{path} {where}: an image must name its video ('video') and frame ('frame'), "
                "or be a still image ('file_name' alone)"
            )
        frame = _number(frame, path, where, "frame", int)
        images[img.get("id")] = (os.path.basename(str(video)), frame)
    frames, boxes = set(images.values()), []
    for a in doc.get("annotations", []):
        where = f"annotation id {a.get('id')}"
        if a.get("image_id") not in images:
            raise AnnotationError(
                f"{path} {where}: field 'image_id' {a.get('image_id')!r} is no image"
            )
        if a.get("category_id") not in categories:
            raise AnnotationError(
                f"{path} {where}: field 'category_id' {a.get('category_id')!r} is no category"
            )
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise AnnotationError(f"{path} {where}: field 'bbox' must be [x, y, w, h]")
        video, frame = images[a["image_id"]]
        label = categories[a["category_id"]]
        boxes.append(_box(path, where, video, frame, label, bbox, a.get("track_id")))
    return _finish(path, frames, boxes)


def _read_mammalps(path: str, doc: dict, class_field: str) -> Annotations:
    info = doc.get("info") or {}
    name = info.get("file_path") or (info.get("file_id") and f"{info['file_id']}.mp4")
    if not name:
        raise AnnotationError(f"{path}: field 'info.file_path' (the video) is missing")
    video = os.path.basename(name)
    frames, boxes = set(), []
    for i, fr in enumerate(doc.get("frames") or []):
        frame = _number(fr.get("frame_id"), path, f"frames[{i}]", "frame_id", int)
        frames.add((video, frame))
        for j, det in enumerate(fr.get("detections") or []):
            where = f"frames[{i}].detections[{j}]"
            bbox = det.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise AnnotationError(f"{path} {where}: field 'bbox' must be [x1, y1, x2, y2]")
            x1, y1, x2, y2 = (_number(v, path, where, "bbox") for v in bbox)
            label = (det.get("attributes") or {}).get(class_field, det.get(class_field))
            if label is None:
                raise AnnotationError(f"{path} {where}: field 'attributes.{class_field}' missing")
            boxes.append(
                _box(
                    path,
                    where,
                    video,
                    frame,
                    label,
                    [x1, y1, x2 - x1, y2 - y1],
                    det.get("track_id"),
                )
            )
    return _finish(path, frames, boxes)


def check_videos(ann: Annotations, videos: dict[str, dict]) -> Annotations:
    """Check against `videos` (file name -> n_frames, width, height, and still: True for a still
    image, whose only frame is 0) and clamp boxes partly outside their frame; returns the
    checked annotations, with a warning per clamped box."""
    where_frame = {}
    for b in ann.boxes:
        where_frame.setdefault((b.video, b.frame), b.where)
    for video, frame in ann.frames:
        where = where_frame.get((video, frame), ann.path)
        if video not in videos:
            known = ", ".join(sorted(videos)) or "none"
            raise AnnotationError(
                f"{where}: field 'video': {video!r} is not a known video (known: {known})"
            )
        n = videos[video]["n_frames"]
        if frame < 0:
            raise AnnotationError(f"{where}: field 'frame': {frame} is negative")
        if frame != 0 and videos[video].get("still"):
            raise AnnotationError(still_frame_message(f"{where}: field 'frame'", video, str(frame)))
        if frame >= n:
            raise AnnotationError(
                f"{where}: field 'frame': {frame} is beyond the end of {video!r} "
                f"({n} frames, the last is {n - 1})"
            )
    checked, warnings = [], list(ann.warnings)
    for b in ann.boxes:
        width, height = videos[b.video]["width"], videos[b.video]["height"]
        inside = box_ops.clip(b.xywh, width, height)[0]
        if inside[2] <= 0 or inside[3] <= 0:
            raise AnnotationError(
                f"{b.where}: field 'bbox' {list(b.xywh)} lies wholly outside the "
                f"{width}x{height} frame of {b.video!r}"
            )
        if not np.allclose(inside, b.xywh):
            warnings.append(
                f"{b.where}: box {list(b.xywh)} clamped to the {width}x{height} frame "
                f"({[round(float(v), 2) for v in inside]})"
            )
            b = replace(b, xywh=tuple(float(v) for v in inside))
        checked.append(b)
    return Annotations(ann.path, ann.frames, checked, warnings)


def check_classes(ann: Annotations, classes: list[str]) -> None:
    """Every class of `ann` must be one the head was trained on."""
    for b in ann.boxes:
        if b.label not in classes:
            raise AnnotationError(
                f"{b.where}: field 'class' {b.label!r} was not in the training set "
                f"(the head knows {', '.join(classes)})"
            )
