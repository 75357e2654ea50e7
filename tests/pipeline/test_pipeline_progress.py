"""The extraction's progress counts frames, so its ETA holds when videos differ in length."""

from __future__ import annotations

import io

from rich.console import Console

from ethoprism.pipeline.progress import RichReporter
from ethoprism.pipeline.run import VideoResult


def test_progress_total_and_done_are_frames():
    r = RichReporter(console=Console(file=io.StringIO()))
    r.start(3)
    task = r.progress.tasks[0]
    r.video_started("short.mp4", 1000)
    assert task.total == 3000  # the two unopened videos count as the mean so far
    r.windows_done(10, 160)
    assert task.completed == 160
    r.windows_done(0, 840)
    r.video_done(VideoResult("short.mp4", "complete", 62))
    r.video_started("long.mp4", 10_000)
    assert task.total == 11_000 + 5500
    r.video_done(VideoResult("done.mp4", "skipped"))  # already in the store: no work
    assert task.total == 11_000
    r.windows_done(600, 9600)
    assert task.completed == 10_600 and task.remaining == 400
    r.stop()
