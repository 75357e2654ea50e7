"""Decoding ahead of the encoder: a pool of workers, each video's windows delivered in order.

Worker j decodes videos j, j+N, j+2N, ... into its own bounded queue; the consumer reads video
0 from queue 0 to its end, then video 1 from queue 1, and so on. So while the encoder works on
one video the other workers are already decoding the next ones, memory is bounded by the queue
sizes (never by video length), and the windows of a video arrive in order.

Workers are processes (spawned: JAX does not survive fork) unless the caller is itself a
daemonic process, such as a Dask worker, which may not have children; then they are threads
(PyAV releases the GIL while decoding and scaling, so threads still overlap with inference).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import VideoInfo, probe_video
from ethoprism.extract.windows import Window, iter_windows


@dataclass
class Start:
    """A video opened: its metadata and fingerprint."""

    index: int
    info: VideoInfo


@dataclass
class Skip:
    """The store already holds this video complete."""

    index: int
    info: VideoInfo


@dataclass
class Windows:
    index: int
    windows: list[Window]


@dataclass
class End:
    """All windows of the video were delivered; counts are what decoding found."""

    index: int
    n_frames: int
    duration: float


@dataclass
class Failed:
    index: int
    path: str
    info: VideoInfo | None
    reason: str


def _decode_videos(jobs, out, prep, complete, threads, chunk, resume):
    """Worker body: decode each (index, path) job into messages on `out`."""
    for index, path in jobs:
        info = None
        try:
            info = probe_video(path)
            if info.sha256 in complete:
                out.put(Skip(index, info))
                continue
            out.put(Start(index, info))
            pending = []
            windows = iter_windows(path, prep, threads, resume.get(info.sha256, 0))
            while True:
                try:
                    pending.append(next(windows))
                except StopIteration as stop:
                    n_frames, duration = (
                        stop.value
                    )  # what decoding found, not what the header claims
                    break
                if len(pending) == chunk:
                    out.put(Windows(index, pending))
                    pending = []
            if pending:
                out.put(Windows(index, pending))
            out.put(End(index, n_frames, duration))
        except EthoprismError as e:
            out.put(Failed(index, path, info, str(e)))
        except Exception as e:  # noqa: BLE001 (an unexpected bug must still cost only this video)
            detail = traceback.format_exception_only(e)[-1].strip()
            out.put(Failed(index, path, info, f"unexpected error while decoding {path}: {detail}"))


def _decode_videos_in_process(*args):
    """Process worker body: Ctrl-C (sent to the whole process group) is the parent's to handle;
    the parent stops this worker when it has saved what it can."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _decode_videos(*args)


def _in_daemon() -> bool:
    return mp.current_process().daemon


class DecodePool:
    """Iterate `events()` to receive Start/Skip/Windows/End/Failed for every video, in order.

    `complete`: sha256s of videos to skip; `resume`: sha256 -> windows already stored in
    committed pieces, which a video's windows start after.
    """

    def __init__(
        self,
        paths: list[str],
        prep: Preprocessing,
        *,
        workers: int = 2,
        complete: frozenset[str] = frozenset(),
        resume: dict[str, int] | None = None,
        queue_windows: int = 16,
        threads_per_worker: int = 0,
        use_processes: bool | None = None,
    ):
        self.paths = paths
        self.n_workers = max(1, min(workers, len(paths)))
        use_processes = (not _in_daemon()) if use_processes is None else use_processes
        chunk = 4
        maxsize = max(2, queue_windows // chunk)
        if use_processes:
            ctx = mp.get_context("spawn")
            self._queues = [ctx.Queue(maxsize) for _ in range(self.n_workers)]
            make, target = ctx.Process, _decode_videos_in_process
        else:
            self._queues = [queue.Queue(maxsize) for _ in range(self.n_workers)]
            make, target = threading.Thread, _decode_videos
        self._workers = []
        for j in range(self.n_workers):
            jobs = [(i, p) for i, p in enumerate(paths) if i % self.n_workers == j]
            args = (jobs, self._queues[j], prep, complete, threads_per_worker, chunk, resume or {})
            w = make(target=target, args=args, daemon=True)
            w.start()
            self._workers.append(w)

    def events(self) -> Iterator[Start | Skip | Windows | End | Failed]:
        for index in range(len(self.paths)):
            q = self._queues[index % self.n_workers]
            while True:
                event = self._get(q, index)
                yield event
                if isinstance(event, Skip | End | Failed):
                    break

    def _get(self, q, index):
        worker = self._workers[index % self.n_workers]
        while True:
            try:
                event = q.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive():
                    code = getattr(worker, "exitcode", None)
                    return Failed(
                        index, self.paths[index], None, f"decoder worker died (exit code {code})"
                    )
                continue
            assert event.index == index, (event.index, index)
            return event

    def close(self) -> None:
        for w in self._workers:
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.terminate()
        for w in self._workers:
            w.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
