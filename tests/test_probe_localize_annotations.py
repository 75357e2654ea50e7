"""Box annotations: the three formats read to the same boxes, the real MammAlps demo file, and a
clear error (file, row or id, field) for each kind of malformed file."""

import json
from pathlib import Path

import pytest

from ethoprism.probe.localize import annotations as ann_io

MAMMALPS = sorted(Path("/work/shared/data/labelled/mammalps").glob("demo_annotations_*.json"))
VIDEOS = {"a.mp4": {"n_frames": 50, "width": 100, "height": 80}}
BOXES = [
    ("a.mp4", 3, "mouse", (10.0, 20.0, 30.0, 15.0)),
    ("a.mp4", 3, "rat", (50.0, 5.0, 20.0, 20.0)),
    ("a.mp4", 7, "mouse", (12.0, 21.0, 30.0, 15.0)),
]


def write_csv(path, rows, header="video,frame,track,class,x,y,w,h"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def as_tuples(ann):
    return sorted((b.video, b.frame, b.label, b.xywh) for b in ann.boxes)


def test_csv_coco_and_mammalps_read_to_the_same_boxes(tmp_path):
    write_csv(
        tmp_path / "a.csv",
        [(v, f, k, c, *b) for k, (v, f, c, b) in enumerate(BOXES)]
        + [("a.mp4", 9, "", "", "", "", "", "")],
    )
    coco = {
        "images": [
            {"id": 1, "video": "videos/a.mp4", "frame": 3},
            {"id": 2, "video": "a.mp4", "frame": 7},
            {"id": 3, "video": "a.mp4", "frame": 9},
        ],
        "categories": [{"id": 5, "name": "mouse"}, {"id": 6, "name": "rat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 20, 30, 15]},
            {"id": 2, "image_id": 1, "category_id": 6, "bbox": [50, 5, 20, 20]},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [12, 21, 30, 15]},
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    frames = {}
    for _v, f, c, (x, y, w, h) in BOXES:
        frames.setdefault(f, []).append(
            {"track_id": 1, "bbox": [x, y, x + w, y + h], "attributes": {"species": c}}
        )
    mamm = {
        "info": {"file_path": "S/a.mp4"},
        "frames": [{"frame_id": f, "detections": d} for f, d in frames.items()]
        + [{"frame_id": 9, "detections": []}],
    }
    (tmp_path / "m.json").write_text(json.dumps(mamm))
    read = [ann_io.read(tmp_path / n) for n in ("a.csv", "a.json", "m.json")]
    for ann in read:
        assert as_tuples(ann) == as_tuples(read[0])
        assert ann.frames == [("a.mp4", 3), ("a.mp4", 7), ("a.mp4", 9)]  # 9: no animal
        assert ann.classes == ["mouse", "rat"]


@pytest.mark.skipif(not MAMMALPS, reason="no MammAlps demo annotations in shared/")
def test_real_mammalps_file():
    ann = ann_io.read(MAMMALPS[0])
    assert ann.videos == ["S1_C1_E4_V0016.mp4"]
    assert len(ann.boxes) > 100 and "red_deer" in ann.classes
    first = min(ann.boxes, key=lambda b: b.frame)
    assert first.frame == 0 and first.xywh == (0.0, 346.0, 400.0, 732.0)
    checked = ann_io.check_videos(
        ann, {"S1_C1_E4_V0016.mp4": {"n_frames": 615, "width": 1920, "height": 1080}}
    )
    assert len(checked.boxes) == len(ann.boxes)


def bad(tmp_path, rows, videos=VIDEOS, **kw):
    with pytest.raises(ann_io.AnnotationError) as e:
        ann_io.check_videos(ann_io.read(write_csv(tmp_path / "bad.csv", rows, **kw)), videos)
    return str(e.value)


def test_each_malformed_file_gets_its_clear_error(tmp_path):
    msg = bad(tmp_path, [("a.mp4", 3, 1, "mouse", 200, 200, 10, 10)])
    assert "bad.csv row 2" in msg and "'bbox'" in msg and "wholly outside" in msg
    msg = bad(
        tmp_path, [("a.mp4", 3, 1, "mouse", 1, 2, 3, 4), ("a.mp4", 50, 1, "mouse", 1, 2, 3, 4)]
    )
    assert "bad.csv row 3" in msg and "'frame'" in msg and "beyond the end" in msg and "49" in msg
    msg = bad(tmp_path, [("b.mp4", 3, 1, "mouse", 1, 2, 3, 4)])
    assert "bad.csv row 2" in msg and "'video'" in msg and "'b.mp4'" in msg and "a.mp4" in msg
    msg = bad(tmp_path, [("a.mp4", 3, 1, "mouse", 1, 2, -3, 4)])
    assert "row 2" in msg and "'w'" in msg
    msg = bad(tmp_path, [("a.mp4", "x", 1, "mouse", 1, 2, 3, 4)])
    assert "row 2" in msg and "'frame'" in msg and "not a number" in msg
    msg = bad(tmp_path, [("a.mp4", 3, 1, "mouse", 1, 2, 3, 4)], header="video,frame,class,x,y,w,h")
    assert "lacks column(s) track" in msg
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ann_io.AnnotationError, match="empty.csv: the annotation file is empty"):
        ann_io.read(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("video,frame,track,class,x,y,w,h\n")
    with pytest.raises(ann_io.AnnotationError, match="header.csv: no annotated frame"):
        ann_io.read(tmp_path / "header.csv")
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "video": "a.mp4", "frame": 1}],
                "categories": [{"id": 1, "name": "m"}],
                "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}],
            }
        )
    )
    with pytest.raises(ann_io.AnnotationError, match=r"c.json annotation id 7: field 'image_id' 2"):
        ann_io.read(tmp_path / "c.json")


def test_box_partly_outside_is_clamped_with_a_warning(tmp_path):
    ann = ann_io.read(write_csv(tmp_path / "p.csv", [("a.mp4", 3, 1, "mouse", 90, 70, 20, 20)]))
    checked = ann_io.check_videos(ann, VIDEOS)
    assert checked.boxes[0].xywh == (90.0, 70.0, 10.0, 10.0)
    assert len(checked.warnings) == 1 and "p.csv row 2" in checked.warnings[0]
    assert "clamped" in checked.warnings[0]


def test_class_missing_from_training_is_named(tmp_path):
    ann = ann_io.read(write_csv(tmp_path / "t.csv", [("a.mp4", 3, 1, "vole", 1, 2, 3, 4)]))
    with pytest.raises(ann_io.AnnotationError, match=r"t.csv row 2: field 'class' 'vole' was not"):
        ann_io.check_classes(ann, ["mouse", "rat"])
