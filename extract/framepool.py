"""One video's frames converted on several threads, delivered in order.

The decode pool (`pipeline.decode`) feeds the encoder one video at a time, so one video's frame
rate is what the host delivers. FFmpeg decodes H.264 and most other codecs on threads of its
own, but the conversion to encoder frames ran on the caller's one thread: about 0.6 ms a 1080p
frame, a ceiling near 1,500 frames/s (under 200 windows/s at stride 8) whatever the host's
cores, against an accelerator that encodes 450. Here the conversions (and, for MJPEG, the
decoding: `extract.packets`) run on a few threads, as PyAV releases the GIL while FFmpeg
works, and the frames come back in decoding order. The hand-offs cost 2-6% more CPU per frame
(measured at 384p-1080p); the worker's own thread then spends 0.3-0.45 ms a frame instead of
1.2 (1080p H.264) or 2.3 (720p MJPEG).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

# Frames in flight per thread: enough that a thread never waits for the next one, few enough
# that the decoder's held buffers stay small (a 1080p frame is 3 MB).
DEPTH_PER_THREAD = 2
# Past this, the worker's own thread (demuxing, window assembly: ~0.3 ms a frame) is the limit:
# 8 threads decode and convert 720p MJPEG at about the 3,000 frames/s that thread allows.
MAX_THREADS = 8


def conversion_threads(threads: int) -> int:
    """Threads converting one video's frames: 1 where the caller asked the decoder for one
    thread (everything on the calling thread, as before), else `threads` or, for 0 (FFmpeg
    chooses), the cores this process may use, at most MAX_THREADS."""
    if threads != 0:
        return max(1, threads)
    # sched_getaffinity is Linux's only: elsewhere every core counts
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_THREADS))


class PerThread:
    """One value per thread, made by `make` on the thread's first `get`: libswscale's contexts
    (kept by `preprocess.Resizer`) and FFmpeg's decoders are not thread-safe."""

    def __init__(self, make: Callable):
        self._make, self._local = make, threading.local()

    def get(self):
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._make()
        return value


def ordered_map(fn: Callable, items: Generator, threads: int) -> Generator:
    """fn(item) for each item, in order, computed on `threads` threads (on this one if 1);
    returns what `items` returns. An error raised by `items` comes after the results of the
    items before it, as it would serially; an error raised by `fn` comes in its item's place."""
    if threads <= 1:
        while True:
            try:
                item = next(items)
            except StopIteration as end:
                return end.value
            yield fn(item)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="ethoprism-frames") as pool:
        try:
            while True:
                try:
                    item = next(items)
                except StopIteration as end:
                    value = end.value
                    break
                except Exception:  # not Ctrl-C: that stops at once
                    while pending:  # the frames before the damage, then the damage
                        yield pending.popleft().result()
                    raise
                pending.append(pool.submit(fn, item))
                if len(pending) >= threads * DEPTH_PER_THREAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
            return value
        finally:
            for future in pending:  # the consumer stopped early: nothing more to convert
                future.cancel()
