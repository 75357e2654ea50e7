"""Progress of a run: a rich display for people, one JSON line per video for overnight logs."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ethoprism.pipeline.run import STARVED_SHARE, Reporter, VideoResult


class RichReporter(Reporter):
    """Frames done of all frames to extract, with an ETA; videos done/failed; the window rate;
    a warning when the accelerator waits on the host's decoding more than `starved_share` of
    the time.

    The total is in frames, as the videos' headers say; videos the decoders have not opened yet
    count as the mean of those opened so far, until they are opened.
    """

    def __init__(self, console: Console | None = None, starved_share: float = STARVED_SHARE):
        self.progress = Progress(
            TextColumn("[bold]extract[/]"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.fields[frames]} frames"),
            TextColumn("{task.fields[videos]}/{task.fields[n_videos]} videos"),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[windows]} windows, {task.fields[rate]:.1f}/s"),
            TextColumn("[yellow]{task.fields[starved]}[/]"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.windows = self.failed = self.videos = 0
        self.opened = self.opened_frames = self.skipped = 0
        self.starved_share = starved_share
        self.warned = False

    def start(self, n_videos: int) -> None:
        self.t0 = time.perf_counter()
        self.n_videos = n_videos
        self.progress.start()
        self.task = self.progress.add_task(
            "extract",
            total=None,
            failed=0,
            windows=0,
            rate=0.0,
            videos=0,
            n_videos=n_videos,
            frames="?",
            starved="",
        )

    def _update_total(self) -> None:
        unopened = self.n_videos - self.opened - self.skipped
        total = self.opened_frames + unopened * self.opened_frames / max(self.opened, 1)
        frames = f"{total:.0f}" if not unopened else f"~{total:.0f}"
        self.progress.update(self.task, total=total, frames=frames)

    def video_started(self, path: str, frames: int) -> None:
        self.opened += 1
        self.opened_frames += frames
        self._update_total()

    def windows_done(self, n: int, frames: int = 0) -> None:
        self.windows += n
        rate = self.windows / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=frames, windows=self.windows, rate=rate)

    def input_wait(self, share: float) -> None:
        starved = share > self.starved_share
        label = f"accelerator starved {share:.0%}" if starved else ""
        self.progress.update(self.task, starved=label)
        if starved and not self.warned:
            self.warned = True
            self.progress.console.print(
                f"[yellow]warning:[/] the accelerator is starved by the host: its input waited "
                f"for decoded windows {share:.0%} of the time (more than "
                f"{self.starved_share:.0%}); more --decode-workers and cores would feed it "
                "(`ethoprism bench host` and `extract --dry-run` say how many)",
                highlight=False,
            )

    def video_done(self, result: VideoResult) -> None:
        self.failed += result.status == "failed"
        self.videos += 1
        if result.status == "skipped":  # already in the store: no work, not in the total
            self.skipped += 1
            self._update_total()
        self.progress.update(self.task, videos=self.videos, failed=self.failed)
        if result.status == "failed":
            self.progress.console.print(
                f"[red]failed[/] {result.path}: {result.reason}", highlight=False
            )

    def stop(self) -> None:
        self.progress.stop()


class JsonLinesReporter(Reporter):
    """Appends one JSON object per finished video to a file, flushed at once (tail -f friendly)."""

    def __init__(self, path: str, inner: Reporter | None = None):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole run; closed by stop)
        self.inner = inner or Reporter()

    def start(self, n_videos: int) -> None:
        self.inner.start(n_videos)

    def video_started(self, path: str, frames: int) -> None:
        self.inner.video_started(path, frames)

    def windows_done(self, n: int, frames: int = 0) -> None:
        self.inner.windows_done(n, frames)

    def input_wait(self, share: float) -> None:
        self.inner.input_wait(share)

    def video_done(self, result: VideoResult) -> None:
        line = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result.__dict__)
        self.file.write(json.dumps(line) + "\n")
        self.inner.video_done(result)

    def stop(self) -> None:
        if hasattr(self.inner, "stop"):
            self.inner.stop()
        self.file.close()
