"""Decoding ahead of the encoder: a pool of workers, each video's windows delivered in order.

Worker j decodes videos j, j+N, j+2N, ... into its own bounded queue; the consumer reads video
0 from queue 0 to its end, then video 1 from queue 1, and so on. So while the encoder works on
one video the other workers are already decoding the next ones, memory is bounded by the queue
sizes (never by video length), and the windows of a video arrive in order. Since the encoder
takes one video at a time, a worker spreads its video's frames over threads of its own
(`extract.framepool`).

Workers are processes (spawned: JAX does not survive fork) unless the caller is itself a
daemonic process, such as a Dask worker, which may not have children; then they are threads
(PyAV releases the GIL while decoding and scaling, so threads still overlap with inference).
A worker process writes each window's pixels straight into a slot of shared memory
(`WindowSlots`) and sends only the slot's number: pickling 4 MB windows through a pipe cost
four more copies of them than the one the consumer makes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from multiprocessing import shared_memory

import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import VideoInfo, probe_video
from ethoprism.extract.windows import Window, iter_windows

THROTTLE_ENV = "ETHOPRISM_TEST_DECODE_DELAY_S"  # test-only: slows every decoder down


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
    slots: list[int] | None = None  # from a worker process: pixels are in these slots
    channels: list[int] | None = None  # and have these channels (1: a grayscale source)


class WindowSlots:
    """Window-sized buffers in shared memory between one decode worker process and the consumer.

    The worker takes a free slot for each window (waiting while none is: back-pressure), the
    window assembler writes into it, and the consumer copies the window out and frees it.
    Created by the consumer, which alone unlinks the memory (`close`).
    """

    def __init__(self, ctx, n: int, shape: tuple[int, ...]):
        self.n, self.shape = n, tuple(shape)
        self.memory = shared_memory.SharedMemory(create=True, size=n * int(np.prod(shape)))
        self.free = ctx.Queue()
        for i in range(n):
            self.free.put(i)

    @property
    def array(self) -> np.ndarray:
        return np.ndarray((self.n, *self.shape), np.uint8, buffer=self.memory.buf)

    def take(self, channels: int = 3) -> np.ndarray:
        return self.view(self.free.get(), channels)

    def view(self, slot: int, channels: int = 3) -> np.ndarray:
        """Slot `slot` as a window of `channels` (fewer than the slot's: its leading bytes)."""
        flat = self.array[slot].reshape(-1)
        window = (*self.shape[:-1], channels)
        return flat[: int(np.prod(window))].reshape(window)

    def slot_of(self, pixels: np.ndarray) -> int:
        nbytes = int(np.prod(self.shape))
        return (pixels.ctypes.data - self.array.ctypes.data) // nbytes

    def release(self, slot: int) -> None:
        self.free.put(slot)

    def close(self) -> None:
        with suppress(BufferError):  # a view still alive somewhere: the unlink frees it later
            self.memory.close()
        self.memory.unlink()


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


def _decode_videos(
    jobs, out, prep, complete, threads, chunk, resume, decoder="cpu", slots=None, centres=None
):
    """Worker body: decode each (index, path) job into messages on `out` (window pixels in
    `slots` when given); `resume`: sha256 -> the first window to yield."""

    def send(index, pending):
        if slots is None:
            out.put(Windows(index, pending))
            return
        numbers = [slots.slot_of(w.pixels) for w in pending]
        channels = [w.pixels.shape[-1] for w in pending]
        out.put(Windows(index, [replace(w, pixels=None) for w in pending], numbers, channels))

    # Tests starve the encoder on purpose with it: seconds slept per window decoded.
    delay = float(os.environ.get(THROTTLE_ENV, "0") or 0)
    for index, path in jobs:
        info = None
        pending = []
        try:
            info = probe_video(path)
            if info.sha256 in complete:
                out.put(Skip(index, info))
                continue
            out.put(Start(index, info))
            pending = []
            alloc = None if slots is None else slots.take
            first = resume.get(info.sha256, 0)
            only = None if centres is None else centres.get(os.path.basename(path), ())
            windows = iter_windows(
                path,
                prep,
                threads=threads,
                decoder=decoder,
                alloc=alloc,
                first_window=first,
                centres=only,
            )
            while True:
                try:
                    pending.append(next(windows))
                    if delay:
                        time.sleep(delay)
                except StopIteration as stop:
                    n_frames, duration = (
                        stop.value
                    )  # what decoding found, not what the header claims
                    break
                if len(pending) == chunk:
                    send(index, pending)
                    pending = []
            if pending:
                send(index, pending)
                pending = []
            out.put(End(index, n_frames, duration))
        except EthoprismError as e:
            out.put(Failed(index, path, info, str(e)))
        except Exception as e:  # noqa: BLE001 (an unexpected bug must still cost only this video)
            detail = traceback.format_exception_only(e)[-1].strip()
            out.put(Failed(index, path, info, f"unexpected error while decoding {path}: {detail}"))
        finally:
            for w in pending if slots is not None else ():  # windows never sent
                slots.release(slots.slot_of(w.pixels))


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
        decoder: str = "cpu",
        centres: dict[str, tuple[int, ...]] | None = None,
    ):
        self.paths = paths
        self.n_workers = max(1, min(workers, len(paths)))
        use_processes = (not _in_daemon()) if use_processes is None else use_processes
        # The hardware decoder resizes on the accelerator: it runs where the JAX client is.
        use_processes = use_processes and decoder == "cpu"
        chunk = 4
        maxsize = max(2, queue_windows // chunk)
        self._slots: list[WindowSlots | None] = [None] * self.n_workers
        if use_processes:
            ctx = mp.get_context("spawn")
            self._queues = [ctx.Queue(maxsize) for _ in range(self.n_workers)]
            make, target = ctx.Process, _decode_videos_in_process
            shape = (prep.window_length, prep.frame_size, prep.frame_size, 3)
            # the queued windows, the chunk being filled and the one being read
            self._slots = [WindowSlots(ctx, (maxsize + 2) * chunk, shape) for _ in self._slots]
        else:
            self._queues = [queue.Queue(maxsize) for _ in range(self.n_workers)]
            make, target = threading.Thread, _decode_videos
        self._workers = []
        for j in range(self.n_workers):
            jobs = [(i, p) for i, p in enumerate(paths) if i % self.n_workers == j]
            args = (jobs, self._queues[j], prep, complete, threads_per_worker, chunk, resume or {})
            args += (decoder, self._slots[j], centres)
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
            if isinstance(event, Windows) and event.slots is not None:
                slots = self._slots[index % self.n_workers]
                for window, slot, channels in zip(
                    event.windows, event.slots, event.channels, strict=True
                ):
                    window.pixels = slots.view(slot, channels).copy()
                    slots.release(slot)
            return event

    def close(self) -> None:
        for w in self._workers:
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.terminate()
        for w in self._workers:
            w.join(timeout=5)
        for slots in self._slots:
            if slots is not None:
                slots.close()
        self._slots = [None] * self.n_workers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
