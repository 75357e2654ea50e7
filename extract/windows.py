"""Fixed-length windows of resized frames, streamed from a video with memory bounded by one window
span.

Window i starts at frame i*S (S = window_stride) and holds frames start + j*K (K = frame_step,
j = 0..window_length-1). Windows continue while they start inside the video; the last one is
the first that reaches the last frame. Positions past the end repeat the window's last real frame
(its `frame_indices` say so), and `n_valid_frames` counts the real ones. With S larger than the
window span, frames between windows belong to no window, by design.

Windows of grayscale sources (pixel format gray*) have one channel, not three: a third of the
bytes to assemble, queue and send to the device, which makes the three equal RGB channels
(`extract.encode`). Their values are those of any channel of the RGB path, so tokens are equal.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ethoprism.extract.decoders import open_backend
from ethoprism.extract.framepool import ordered_map
from ethoprism.extract.preprocess import Preprocessing


@dataclass
class Window:
    start_frame: int
    frame_step: int
    n_valid_frames: int
    start_time: float  # seconds, the pts time of the start frame
    frame_indices: (
        np.ndarray
    )  # (window_length,) int64 source frames; padding repeats the last valid one
    pixels: np.ndarray  # (window_length, frame_size, frame_size, 3 or 1) uint8 RGB, or gray
    frame_times: np.ndarray  # (window_length,) float64 pts seconds of frame_indices' frames


def plan_windows(n_frames: int, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(start_frames, n_valid_frames) of every window of an n_frames video, as iter_windows yields
    them."""
    L, S, K = prep.window_length, prep.window_stride, prep.frame_step
    if n_frames <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    last = n_frames - 1
    first_reaching = -(-max(0, last - (L - 1) * K) // S)  # first k with k*S + (L-1)*K >= last
    n_windows = min(first_reaching, last // S) + 1  # starts stay inside the video
    starts = np.arange(n_windows, dtype=np.int64) * S
    return starts, np.minimum(L, (last - starts) // K + 1)


class WindowAssembler:
    """Turns a stream of frames (in index order) into windows, keeping only one window span of them.

    `buffer` is a ring of window_span frames (frame f in slot f % span): its size depends on the
    preprocessing, never on the video's length; it takes the channels of the first frame (one
    for grayscale sources) and widens to three if a colour frame follows. `alloc(channels)`,
    when given, returns the array each window's pixels are written into (shared memory, say),
    instead of a new one. Windows before `first_window` (a resumed video) are passed over: never
    gathered, never returned.
    """

    def __init__(
        self,
        prep: Preprocessing,
        alloc: Callable[[], np.ndarray] | None = None,
        first_window: int = 0,
    ):
        self.prep = prep
        self._alloc = alloc
        self._skip_before = first_window * prep.window_stride  # start frame of `first_window`
        self._span = prep.window_span
        self.buffer: np.ndarray | None = None  # (span, size, size, channels), from the first frame
        self._times = np.zeros(self._span, np.float64)
        self._next_start = 0  # the first window not yet emitted
        self._n_frames = 0

    def needs(self, index: int) -> bool:
        """Whether any window uses frame `index` (the others need not be converted)."""
        S, K = self.prep.window_stride, self.prep.frame_step
        return any(
            (index - j * K) % S == 0 for j in range(self.prep.window_length) if index - j * K >= 0
        )

    def push(self, index: int, time: float, rgb: np.ndarray | None) -> list[Window]:
        """Add frame `index` (rgb None when `needs(index)` is false); returns the windows it
        completes."""
        self._store(index, time, rgb)
        start = self._next_start
        if start + (self.prep.window_length - 1) * self.prep.frame_step == index:
            return self._emitted(self.prep.window_length)
        return []

    def _store(self, index: int, time: float, rgb: np.ndarray | None) -> None:
        if index != self._n_frames:
            raise ValueError(f"frames must arrive in order: expected {self._n_frames}, got {index}")
        self._n_frames += 1
        slot = index % self._span
        self._times[slot] = time
        if rgb is None:
            return
        if self.buffer is None:
            size = self.prep.frame_size
            self.buffer = np.zeros((self._span, size, size, rgb.shape[-1]), np.uint8)
        elif rgb.shape[-1] > self.buffer.shape[-1]:  # a colour frame after gray ones
            self.buffer = np.repeat(self.buffer, rgb.shape[-1], axis=-1)
        self.buffer[slot] = rgb

    def finish(self) -> list[Window]:
        """After the last frame: the padded window that reaches it, if one is still open."""
        last = self._n_frames - 1
        start = self._next_start
        previous_end = start - self.prep.window_stride + self.prep.window_span - 1
        if start > last or (start > 0 and previous_end >= last):
            return []
        return self._emitted((last - start) // self.prep.frame_step + 1)

    def _emitted(self, n_valid: int) -> list[Window]:
        if self._next_start < self._skip_before:  # resumed: an earlier run stored this one
            self._next_start += self.prep.window_stride
            return []
        return [self._emit(n_valid)]

    def _emit(self, n_valid: int) -> Window:
        L, K, start = self.prep.window_length, self.prep.frame_step, self._next_start
        indices = start + np.minimum(np.arange(L), n_valid - 1).astype(np.int64) * K
        window = Window(
            start_frame=start,
            frame_step=K,
            n_valid_frames=int(n_valid),
            start_time=float(self._times[start % self._span]),
            frame_indices=indices,
            pixels=self._gather(indices % self._span),
            frame_times=self._times[indices % self._span],
        )
        self._next_start += self.prep.window_stride
        return window

    def _gather(self, slots: np.ndarray) -> np.ndarray:
        if self._alloc is None:
            return np.take(self.buffer, slots, axis=0)  # a new array, 2x faster than buffer[slots]
        out = self._alloc(self.buffer.shape[-1])
        for j, slot in enumerate(slots):  # frame by frame: np.take(out=) is 4x slower
            out[j] = self.buffer[slot]
        return out


def centred_start(frame: int, n_frames: int, prep: Preprocessing) -> int:
    """Start of the window that serves `frame` as its frame of interest: the frame sits at
    position L/2 - 1 (frames i-7..i+8 for 16), the window clamped to lie inside the video."""
    L, K = prep.window_length, prep.frame_step
    return max(0, min(frame - (L // 2 - 1) * K, n_frames - 1 - (L - 1) * K))


def centred_starts(centres, n_frames: int, prep: Preprocessing) -> list[int]:
    """Starts of the windows `CentredAssembler` yields for `centres` in an n_frames video, in
    order: one per distinct `centred_start`; frames past the end serve no window."""
    return sorted({centred_start(int(c), n_frames, prep) for c in centres if 0 <= c < n_frames})


class CentredAssembler(WindowAssembler):
    """Only the windows centred on given frames (`centred_start`), once each, in start order.

    A window is emitted as soon as its last frame arrives; those that the video's end clamps
    are emitted by `finish`, from the ring buffer, which then holds the video's last frames.
    The first `first_window` of them (a resumed video's stored ones) are passed over.
    """

    def __init__(
        self,
        prep: Preprocessing,
        centres,
        alloc: Callable[[], np.ndarray] | None = None,
        first_window: int = 0,
    ):
        super().__init__(prep, alloc)
        self._to_skip = first_window
        self._centres = sorted({int(c) for c in centres})
        self._pending = list(self._centres)
        self._last_start = -1

    def needs(self, index: int) -> bool:
        k = bisect.bisect_left(self._centres, index - self.prep.window_span)
        return k < len(self._centres) and self._centres[k] <= index + self.prep.window_span

    def push(self, index: int, time: float, rgb: np.ndarray | None) -> list[Window]:
        self._store(index, time, rgb)
        out = []
        L, K = self.prep.window_length, self.prep.frame_step
        while self._pending:
            start = max(0, self._pending[0] - (L // 2 - 1) * K)
            if start + (L - 1) * K != index:
                break
            self._pending.pop(0)
            out += self._centred(start, L)
        return out

    def finish(self) -> list[Window]:
        n, out = self._n_frames, []
        for c in self._pending:
            if c < n:  # frames past the end are the annotations' error, reported there
                start = centred_start(c, n, self.prep)
                out += self._centred(start, (n - 1 - start) // self.prep.frame_step + 1)
        self._pending = []
        return out

    def _centred(self, start: int, n_valid: int) -> list[Window]:
        if start == self._last_start:
            return []
        self._last_start = self._next_start = start
        if self._to_skip:  # resumed: an earlier run stored this one
            self._to_skip -= 1
            return []
        return [self._emit(min(n_valid, self.prep.window_length))]


def stack_windows(pixels: list[np.ndarray]) -> np.ndarray:
    """Windows' pixels as one encoder batch. Gray windows keep their one channel unless the
    batch also holds colour ones; then every window has three (gray repeated)."""
    if len({p.shape[-1] for p in pixels}) > 1:
        pixels = [np.broadcast_to(p, (*p.shape[:-1], 3)) for p in pixels]
    return np.stack(pixels)


def iter_windows(
    path,
    prep: Preprocessing,
    threads: int = 0,
    decoder: str = "cpu",
    alloc: Callable[[], np.ndarray] | None = None,
    first_window: int = 0,
    centres=None,
) -> Generator[Window, None, tuple[int, float]]:
    """Decode `path` and yield its windows in order (see the module docstring for which ones;
    with `centres`, only the windows centred on those frames, see `CentredAssembler`).

    Returns (StopIteration.value) (n_frames, duration in seconds) as decoding found them, which
    can differ from what the container's header claims. Streaming: memory is one window span of
    resized frames plus the decoder's own buffers. A damaged video raises VideoError after
    yielding the windows before the damage; callers must then discard the video's windows.
    `decoder`: the backend, "cpu" or "nvdec" (`extract.decoders`); `alloc`: see WindowAssembler.
    `first_window` > 0 resumes a video: earlier windows are not yielded, and (off `centres`)
    frames only they use are decoded but not resized.
    """
    if centres is None:
        skip_before = first_window * prep.window_stride  # start frame of window `first_window`
        assembler = WindowAssembler(prep, alloc, first_window)
    else:  # centred windows are off the stride grid: every needed frame is resized
        skip_before = 0
        assembler = CentredAssembler(prep, centres, alloc, first_window)
    decode, resize, workers = open_backend(decoder, prep, threads)

    def convert(decoded):  # on a conversion thread: `needs` only reads the assembler's plan
        index, time, frame = decoded
        needed = index >= skip_before and assembler.needs(index)
        return index, time, resize(frame) if needed else None

    frames = ordered_map(convert, decode(path), workers)
    while True:
        try:
            index, time, rgb = next(frames)
        except StopIteration as end:
            n_frames, duration = end.value
            break
        yield from assembler.push(index, time, rgb)
    yield from assembler.finish()
    return n_frames, duration
