"""One host's extraction run: decode -> encode -> write, overlapped through bounded queues.

    DecodePool (processes) --windows--> main thread: batches, dispatches to the accelerators
                                            --(handle, ops)--> writer thread: fetch, quantise,
                                                               append, commit

The main thread only stacks windows and dispatches (JAX runs asynchronously), so the devices
are fed while the writer thread waits for the previous batch and writes it. Each batch carries
the ordered list of store operations it implies (start a video, rows of a video, end or
failure of a video), so a batch may hold the tail of one video and the head of the next and the
store still sees every video begun, appended and committed in order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.windows import stack_windows
from ethoprism.pipeline.config import RunConfig, resolve_decoder
from ethoprism.pipeline.decode import DecodePool, End, Failed, Skip, Start, Windows
from ethoprism.store.stream import keep_freed_memory


@dataclass
class VideoResult:
    path: str
    status: str  # "complete" | "skipped" (already in the store) | "failed"
    windows: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass
class ExtractSummary:
    store: str
    model: str
    checkpoint_sha256: str
    devices: int
    videos: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.videos)

    @property
    def windows(self) -> int:
        return sum(v.windows for v in self.videos)

    @property
    def failed(self) -> list[VideoResult]:
        return [v for v in self.videos if v.status == "failed"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            complete=self.count("complete"),
            skipped=self.count("skipped"),
            n_failed=self.count("failed"),
            windows=self.windows,
            windows_per_s=self.windows / self.seconds if self.seconds else 0.0,
        )
        return d


# The share of the time the encoder's feeder may wait for decoded windows before the display
# says the accelerator is starved by the host (more decode workers or cores would help).
STARVED_SHARE = 0.25


class Reporter:
    """Receives progress; the CLI's rich display and JSON-lines log implement it.

    Work is counted in source frames (what an ETA needs: videos differ in length by orders of
    magnitude): `video_started` says how many frames a video has left to extract (all of them,
    or those after its committed pieces), `windows_done` how many of them are done.
    """

    def start(self, n_videos: int) -> None: ...
    def video_started(self, path: str, frames: int) -> None: ...
    def windows_done(self, n: int, frames: int = 0) -> None: ...
    def video_done(self, result: VideoResult) -> None: ...
    def input_wait(self, share: float) -> None:
        """The share of the time since the first batch that the accelerator's input waited for
        decoded windows (its queue empty); called at each batch."""


class ExtractInterrupted(EthoprismError):
    """Ctrl-C during a run: committed videos and pieces are kept, and the same command
    resumes."""


@dataclass
class _OpenVideo:
    writer: store.VideoWriter
    n_frames: int  # as the header says
    position: int  # frames covered by the windows written so far
    t0: float = field(default_factory=time.perf_counter)
    windows: int = 0  # appended by this run
    piece_t0: float = field(default_factory=time.perf_counter)  # since the last piece


def complete_fingerprints(store_path: str) -> frozenset[str]:
    """sha256 of every video the store already holds complete (empty for a new store)."""
    if not os.path.exists(store_path):
        return frozenset()
    ds = store.open(store_path)
    status = ds["video_status"].values
    return frozenset(
        str(s) for s, st in zip(ds["video_sha256"].values, status, strict=False) if st == "complete"
    )


class _Writer(threading.Thread):
    """Applies each batch's store operations in order; the only thread that touches the store."""

    def __init__(
        self,
        writer,
        paths,
        reporter: Reporter,
        results: list[VideoResult],
        cfg: RunConfig,
    ):
        super().__init__(name="ethoprism-writer", daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=2)  # back-pressure on the main thread
        self.writer, self.paths, self.reporter, self.results = writer, paths, reporter, results
        self.stride, self.piece_seconds = cfg.prep.window_stride, cfg.piece_seconds
        self.error: BaseException | None = None
        self.interrupted = False  # set by the main thread: save pieces of open videos, stop
        self._open: dict[int, _OpenVideo] = {}

    def run(self) -> None:
        try:
            while (item := self.inbox.get()) is not None:
                handle, ops = item
                encoded = ShardedEncoder.fetch(handle) if handle is not None else None
                self._apply(ops, encoded)
            if self.interrupted:
                for video in self._open.values():
                    video.writer.commit_piece()
        except BaseException as e:  # noqa: BLE001 (re-raised by check() on the main thread)
            self.error = e
            while self.inbox.get() is not None:  # drain so the main thread never blocks
                pass

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _apply(self, ops, encoded) -> None:
        i = 0
        while i < len(ops):
            op, index = ops[i][0], ops[i][1]
            if op == "rows":
                # Consecutive rows of one video become one append.
                j = i
                while j < len(ops) and ops[j][0] == "rows" and ops[j][1] == index:
                    j += 1
                self._append(index, [o[2] for o in ops[i:j]], [o[3] for o in ops[i:j]], encoded)
                i = j
                continue
            if op == "start":
                record = ops[i][2]
                vw = self.writer.begin_video(record)
                done = min(self.writer.resume_point(record.sha256) * self.stride, record.n_frames)
                self._open[index] = _OpenVideo(vw, record.n_frames, done)
                self.reporter.video_started(self.paths[index], record.n_frames - done)
            elif op == "end":
                video = self._open.pop(index)
                video.writer.commit(n_frames=ops[i][2], duration=ops[i][3])
                self.reporter.windows_done(0, max(0, video.n_frames - video.position))
                seconds = time.perf_counter() - video.t0
                self._done(VideoResult(self.paths[index], "complete", video.windows, seconds))
            elif op == "skip":
                self._done(VideoResult(self.paths[index], "skipped"))
            elif op == "fail":
                _, _, record, reason = ops[i]
                began = self._open.pop(index, None)
                self.writer.record_failure(
                    record if record is not None else self.paths[index], reason
                )
                seconds = time.perf_counter() - began.t0 if began else 0.0
                if began:
                    self.reporter.windows_done(0, max(0, began.n_frames - began.position))
                self._done(VideoResult(self.paths[index], "failed", 0, seconds, reason))
            i += 1

    def _append(self, index, rows, windows, encoded) -> None:
        video = self._open[index]
        rows = np.asarray(rows)
        # consecutive rows (as usual) as a read-only view, which the store need not copy
        take = slice(rows[0], rows[-1] + 1) if (np.diff(rows) == 1).all() else rows
        video.writer.append(
            tokens=encoded.tokens[take],
            embedding=encoded.embedding[take],
            start_frame=np.array([w.start_frame for w in windows], np.int64),
            frame_step=np.array([w.frame_step for w in windows], np.int64),
            n_valid_frames=np.array([w.n_valid_frames for w in windows], np.int64),
            start_time=np.array([w.start_time for w in windows], np.float64),
            frame_time=np.stack([w.frame_times for w in windows]),
            # checked on the device; a window that failed there is checked again here, so
            # the store refuses it by name as it would any other
            checked=encoded.checked is not None and bool(encoded.checked[take].all()),
            aligned={k: v[take] for k, v in (encoded.aligned or {}).items()},
        )
        video.windows += len(rows)
        position = min(windows[-1].start_frame + self.stride, video.n_frames)
        self.reporter.windows_done(len(rows), max(0, position - video.position))
        video.position = max(position, video.position)
        if time.perf_counter() - video.piece_t0 >= self.piece_seconds:
            video.writer.commit_piece()
            video.piece_t0 = time.perf_counter()

    def _done(self, result: VideoResult) -> None:
        self.results.append(result)
        self.reporter.video_done(result)


def extract_local(
    paths: list[str],
    store_path: str,
    cfg: RunConfig,
    *,
    part: str | None = None,
    reporter: Reporter | None = None,
    decode_in_processes: bool | None = None,
    sharded: ShardedEncoder | None = None,
) -> ExtractSummary:
    """Extract `paths` into one part of the store at `store_path`; see the module docstring.

    `sharded` lets a caller that already compiled the encoder (a benchmark) reuse it.
    """
    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    cfg = resolve_decoder(cfg, store_path)
    if sharded is None:
        encoder = load_encoder(cfg.model, cfg.checkpoint, cfg.dtype)
        sharded = ShardedEncoder(
            encoder, cfg.batch_size, cfg.prep.pixel_range, store_layout=cfg.layout
        )
    elif sharded.store_layout != cfg.layout:
        raise ValueError(
            f"the encoder codes tokens for {sharded.store_layout}, the run writes {cfg.layout}"
        )
    encoder = sharded.encoder
    results: list[VideoResult] = []
    summary = ExtractSummary(
        store_path, encoder.config.name, encoder.checkpoint_sha256, sharded.n_devices
    )
    # One stable part per host by default, so that a re-run resumes the part a killed run left
    # (the store locks a part: a second writer on this host is told to pick its own name).
    part = part or socket.gethostname()
    # This process exists to write windows: its allocator may keep their buffers (opt-in).
    keep_freed_memory()
    with store.open_writer(
        store_path,
        encoder=encoder.identity,
        preprocessing=cfg.prep.to_dict(),
        layout=cfg.layout,
        part=part,
        windows=cfg.windows,
    ) as writer:
        complete = complete_fingerprints(store_path)
        reporter.start(len(paths))  # once the store is known to be writable
        sink = _Writer(writer, paths, reporter, results, cfg)
        sink.start()
        try:
            with DecodePool(
                paths,
                cfg.prep,
                workers=cfg.decode_workers,
                complete=complete,
                resume=writer.unfinished(),
                queue_windows=2 * sharded.batch_size,
                use_processes=decode_in_processes,
                decoder=cfg.decoder,
                centres=dict(cfg.centres) if cfg.frames_from else None,
            ) as pool:
                _feed(pool, sharded, sink, reporter)
        except KeyboardInterrupt:
            # The batches already sent are written and the open video saved as pieces; a second
            # Ctrl-C must not cut that short.
            sink.interrupted = True
            with _sigint_ignored():
                sink.inbox.put(None)
                sink.join()
            sink.check()
            done = sum(r.status in ("complete", "skipped") for r in results)
            raise ExtractInterrupted(
                f"interrupted: {done} videos complete, rerun the same command to resume"
                + _saved(writer)
            ) from None
        finally:
            if not sink.interrupted:
                sink.inbox.put(None)
                sink.join()
        sink.check()

    summary.videos = sorted(results, key=lambda r: paths.index(r.path))
    summary.seconds = time.perf_counter() - t_start
    return summary


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C while saving (only the main thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _saved(writer) -> str:
    """What an interrupted run kept of its unfinished video, for the message."""
    saved = writer.unfinished()
    if not saved:
        return ""
    return f" (the unfinished video continues after its {sum(saved.values())} saved windows)"


def _feed(pool: DecodePool, sharded: ShardedEncoder, sink: _Writer, reporter: Reporter) -> None:
    """Main-thread loop: turn decode events into batches with their store operations."""
    ops: list[tuple] = []
    pixels: list[np.ndarray] = []
    first_batch = None  # when the first batch went out: the decoders' start-up is not starving
    waited = 0.0  # seconds since then spent waiting for the decoders

    def submit() -> None:
        nonlocal ops, pixels, first_batch
        sink.check()
        handle = sharded.submit(stack_windows(pixels)) if pixels else None
        sink.inbox.put((handle, ops))
        ops, pixels = [], []
        now = time.perf_counter()
        if first_batch is None:
            first_batch = now
        elif now > first_batch:
            reporter.input_wait(waited / (now - first_batch))

    events = pool.events()
    while True:
        t0 = time.perf_counter()
        event = next(events, None)
        if first_batch is not None:
            waited += time.perf_counter() - t0
        if event is None:
            break
        if isinstance(event, Start):
            ops.append(("start", event.index, store.VideoRecord.of(event.info)))
        elif isinstance(event, Skip):
            ops.append(("skip", event.index))
        elif isinstance(event, Windows):
            for window in event.windows:
                ops.append(("rows", event.index, len(pixels), window))
                pixels.append(window.pixels)
                if len(pixels) == sharded.batch_size:
                    submit()
        elif isinstance(event, End):
            ops.append(("end", event.index, event.n_frames, event.duration))
        elif isinstance(event, Failed):
            ops, pixels = drop_rows(ops, pixels, event.index)
            record = store.VideoRecord.of(event.info) if event.info is not None else None
            ops.append(("fail", event.index, record, event.reason))
    if ops or pixels:
        submit()


def drop_rows(ops: list[tuple], pixels: list, index: int) -> tuple[list[tuple], list]:
    """The batch being filled without the rows of video `index` (it failed): their pixels are
    dropped, not encoded, and the other rows renumbered to their new places in the batch."""
    kept = [o for o in ops if not (o[0] == "rows" and o[1] == index)]
    if len(kept) == len(ops):
        return ops, pixels
    keep_rows = [o for o in kept if o[0] == "rows"]
    pixels = [pixels[o[2]] for o in keep_rows]
    renumber = {id(o): k for k, o in enumerate(keep_rows)}
    kept = [("rows", o[1], renumber[id(o)], o[3]) if o[0] == "rows" else o for o in kept]
    return kept, pixels


def ensure_store_parent(store_path: str) -> None:
    parent = os.path.dirname(os.path.abspath(store_path))
    if not os.path.isdir(parent):
        raise EthoprismError(f"cannot create the store {store_path!r}: {parent!r} does not exist")
