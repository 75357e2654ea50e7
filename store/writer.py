"""Writing a feature store: one part per writer process, windows in batches, a commit per video.

Why it is safe (SPEC.md has the full protocol):
- Each writer owns one part (`parts/<name>/`, held by an flock), so no two processes ever write
  the same shard or resize the same array; zarr 3.1.6 silently loses data otherwise.
- Every file is written to a temporary file and renamed into place (zarr's LocalStore does so
  for metadata and per-window arrays; `shards` for token shards), so a SIGKILL leaves each file
  either old or new, never torn.
- What is committed is decided by one document, the part group's `zarr.json`, which is written
  (fsync, rename, fsync the directory: durable.py) only after the video's data files are durable.
  Readers read windows [0, n_windows) and the video table from it and ignore anything past it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
from concurrent.futures import Future
from pathlib import Path
from typing import Self

import numpy as np

from ethoprism import __version__
from ethoprism.store import pieces
from ethoprism.store.durable import (
    PartRecord,
    consolidate,
    default_part_name,
    open_root,
    writable_error,
)
from ethoprism.store.schema import (
    FRAME_TIME,
    WINDOW_COORD_DTYPES,
    Layout,
    StoreError,
    VideoRecord,
    absolute_path,
    aligned_arrays,
    content_key,
)
from ethoprism.store.stream import Pending, WindowStream, Writes

# Windows appended but not yet written (beyond the latest batch): enough to keep the
# compressors and the disk busy between the caller's batches, about 0.4 GB at the base shape.
MAX_WINDOWS_IN_FLIGHT = 32
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreWriter:
    """Appends videos to one part of a store. Use `open_writer`; a context manager.

    The part's record and lock are a `PartRecord` (durable.py); its arrays and the threads
    writing them a `WindowStream` (stream.py); videos are written by a `VideoWriter`.
    """

    def __init__(
        self,
        root: Path,
        layout: Layout,
        part: str,
        windows_per_shard: int | None = None,
        aligned: dict[str, tuple[str, ...]] | None = None,
    ):
        self.root, self.layout, self.part = root, layout, part
        self.aligned = aligned or {}  # a video-text store's text-aligned arrays -> dimensions
        self.video: VideoWriter | None = None  # the open video, if any
        self.record = PartRecord(root, part)
        self.part_dir = self.record.dir
        self.stream = WindowStream(root, layout, part, windows_per_shard, self.aligned)
        self._registered = False  # listed in the root's parts: consolidate at close
        try:
            self.stream.recover(self.record.state)
            self.record.register()
            self._registered = True
        except BaseException:
            self.close()
            raise

    @property
    def state(self) -> dict:
        """The part's commit record, as last published."""
        return self.record.state

    def is_complete(self, sha256: str) -> bool:
        """True if a video with this content is committed in any part of the store."""
        return self.record.is_complete(sha256)

    def create_arrays(
        self,
        encoded: dict[str, np.ndarray],
        channels: int,
        frames: int | None,
        aligned: dict[str, np.ndarray] | None = None,
    ) -> None:
        """The part's arrays, for windows like `encoded` (its first window's stored arrays);
        frame_time too if `frames` (its frames per window) is given; text-aligned like
        `aligned`."""
        self.record.state = self.stream.create_arrays(
            encoded, channels, frames, self.record.state, aligned
        )

    def make_durable(self, start: int, end: int) -> None:
        """The files holding windows [start, end) on disk (token shards are already)."""
        self.record.make_durable(self.stream.arrays, self.stream.encoders, start, end)

    def begin_video(self, record: VideoRecord) -> VideoWriter:
        """Start writing a video; any previous uncommitted video of this writer is discarded.

        If this part holds committed pieces of this very video (a run interrupted inside it),
        the video continues after them: see `resume_point`.
        """
        if not isinstance(record, VideoRecord):
            record = VideoRecord.of(record)
        self._drop_video()
        done = self.resume_point(record.sha256)
        if not done:
            self._forget_pieces()
        self.video = VideoWriter(self, record, done)
        return self.video

    def resume_point(self, sha256: str) -> int:
        """How many leading windows of the video with this content this part holds in committed
        pieces (0 if none): a resumed run feeds `begin_video` the windows after them."""
        return pieces.windows_of(self.state, sha256)

    def unfinished(self) -> dict[str, int]:
        """{sha256: windows in committed pieces} of the video this part holds unfinished."""
        piece = self.state.get(pieces.KEY)
        return {piece["sha256"]: pieces.windows_of(self.state)} if piece else {}

    def _forget_pieces(self) -> None:
        """Drop the pieces of an unfinished video: the next video starts at n_windows."""
        if pieces.windows_of(self.state):
            self.record.publish(pieces.without(self.state))
            self.stream.restart_shards(self.state)

    def record_failure(self, record_or_path, reason: str) -> None:
        """Add (or update) a failed row for a video; discards its uncommitted windows if any."""
        if isinstance(record_or_path, (str, os.PathLike)):
            row = {
                "path": str(record_or_path),
                "size_bytes": -1,
                "sha256": "",
                "fps": 0.0,
                "n_frames": -1,
                "duration": 0.0,
                "width": -1,
                "height": -1,
                "codec": "",
                "abs_path": absolute_path(record_or_path),
            }
        else:
            row = dataclasses.asdict(
                record_or_path
                if isinstance(record_or_path, VideoRecord)
                else VideoRecord.of(record_or_path)
            )
        row.update(status="failed", reason=str(reason), first_window=-1, n_windows=0)
        self._drop_video()
        videos = list(self.state["videos"])
        same = [
            i
            for i, v in enumerate(videos)
            if v["status"] == "failed" and content_key(v) == content_key(row)
        ]
        if same:
            videos[same[-1]] = row
        else:
            videos.append(row)
        try:
            self.record.publish({**self.state, "videos": videos})
        except OSError as e:
            raise writable_error(self.root, e) from None

    def close(self) -> None:
        """Release the part; an uncommitted video is dropped (as if the writer had been killed),
        its committed pieces kept for a later run to resume."""
        self._drop_video(closing=True)
        self.stream.close()
        if self._registered:
            # a store that cannot be written already said so; its old metadata stays valid
            with contextlib.suppress(OSError):
                consolidate(self.root)
            self._registered = False
        self.record.close()

    def _drop_video(self, closing: bool = False) -> None:
        """Forget the open uncommitted video, after its in-flight writes (errors moot) are done.

        Its committed pieces go too, unless the writer is closing: a later run resumes them."""
        if self.video is not None:
            self.video.abandon()
            self.video = None
            self.stream.discard()
            if not closing:
                self._forget_pieces()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Buffers one video's windows, writes whole files as they fill, and commits the video."""

    def __init__(self, store: StoreWriter, record: VideoRecord, resumed: int = 0):
        self.store, self.record = store, record
        self.first = store.state["n_windows"]
        # windows [first, appended) are appended, uncommitted; the first `resumed` of them are
        # in committed pieces (durable, not yet visible)
        self.appended = self.first + resumed
        self._per_window: Pending | None = None  # made once the part's arrays exist
        # Trips to the writer thread not yet waited for, with their windows: a bounded queue
        self._inflight: collections.deque[tuple[Future, int]] = collections.deque()
        self._done = False

    def _check_live(self) -> None:
        if self._done or self.store.video is not self:
            raise StoreError(
                f"video {self.record.path}: this writer was committed, failed or replaced"
            )

    def _error(self, message: str, window: int | None = None, array: str = "tokens") -> StoreError:
        where = (
            ""
            if window is None
            else (
                f" {array} of window {window} of this batch "
                f"(store window {self.appended + window}):"
            )
        )
        return StoreError(f"video {self.record.path}:{where} {message}")

    def append(
        self,
        tokens,
        embedding,
        start_frame,
        frame_step,
        n_valid_frames,
        start_time,
        frame_time=None,
        checked: bool = False,
        aligned: dict | None = None,
    ) -> None:
        """Add a batch of windows: tokens (n,t,h,w,c) and embedding (n,c); frame_time (n, frames)
        the presentation time of each window frame (padding repeats the last valid frame's),
        given with every batch of a part or with none; for a video-text model's store its
        text-aligned arrays (`aligned`: name -> (n, ...)).

        Tokens are float32 at full resolution (the store codes them for its layout), or, for
        the float16 layouts, float16 already coded at the stored resolution (as the extraction
        does on the accelerator: half the bytes to move, no rounding on the host). A window
        the layout cannot store refuses the whole batch, naming the window.

        The batch is checked before this returns and compressed and written in the background.
        Writable float16 tokens are copied for that; read-only ones (numpy views of accelerator
        results, as the extraction passes) are not, so their memory must not be changed through
        another view before the video is committed.

        `checked`: float16 tokens that were coded and found finite where they were made (the
        extraction checks on the accelerator), so the host does not read them a second time to
        check them. Never set it for tokens from anywhere else.
        """
        self._check_live()
        tokens, embedding = self._coerce(tokens, embedding)
        n = len(tokens)
        self._check_token_shape(tokens)
        aligned = self._aligned(aligned, n)
        batch = {
            "embedding": embedding,
            "video": np.full(n, len(self.store.state["videos"]), dtype=np.int64),
            **aligned,
            **_coordinates(
                n,
                start_frame=start_frame,
                frame_step=frame_step,
                n_valid_frames=n_valid_frames,
                start_time=start_time,
            ),
        }
        if frame_time is not None:
            batch[FRAME_TIME] = self._frame_time(frame_time, n)
        try:
            self._ensure_arrays(tokens, batch, aligned)
            batch = self._match_frame_time(batch)
            stored = self._prepare(tokens, checked and tokens.dtype == np.float16)
            self._check_finite(embedding, "embedding")
            self._enqueue(stored, batch, n)
        except OSError as e:
            self._done = True
            raise writable_error(self.store.root, e) from None

    def _coerce(self, tokens, embedding) -> tuple[np.ndarray, np.ndarray]:
        """Tokens as float16 (kept) or float32, embedding as float32, of one batch of n > 0."""
        tokens = np.asarray(tokens)
        if tokens.dtype != np.float16:
            tokens = tokens.astype(np.float32, copy=False)
        embedding = np.asarray(embedding, dtype=np.float32)
        n = tokens.shape[0] if tokens.ndim == 5 else -1
        if n <= 0 or embedding.shape != (n, tokens.shape[-1]):
            raise self._error(
                "expected tokens (n,t,h,w,c) with n > 0 and embedding (n,c); "
                f"got {tokens.shape} and {embedding.shape}"
            )
        return tokens, embedding

    def _check_token_shape(self, tokens: np.ndarray) -> None:
        """Refuse tokens the layout cannot take, or whose stored shape is not the part's."""
        layout = self.store.layout
        if tokens.dtype == np.float16:
            if not layout.coded_on_device:
                raise self._error(f"the {layout.dtype} layout takes float32 tokens, got float16")
            stored_shape = list(tokens.shape[1:])
        else:
            try:
                stored_shape = list(layout.stored_shape(tokens.shape[1:]))
            except ValueError as e:
                raise self._error(str(e)) from None
        shape = self.store.state["token_shape"]
        if shape is not None and stored_shape != shape:
            raise self._error(
                f"stored token shape {tuple(stored_shape)} differs from this part's {tuple(shape)}"
            )

    def _aligned(self, aligned: dict | None, n: int) -> dict[str, np.ndarray]:
        """The text-aligned arrays as float32, exactly the store's, n windows each, finite."""
        aligned = {k: np.asarray(v, dtype=np.float32) for k, v in (aligned or {}).items()}
        if set(aligned) != set(self.store.aligned):
            raise self._error(
                f"this store takes the text-aligned arrays {sorted(self.store.aligned) or 'none'}, "
                f"got {sorted(aligned) or 'none'}"
            )
        for name, values in aligned.items():
            if len(values) != n or len(values.shape) != len(self.store.aligned[name]):
                raise self._error(f"{name} of shape {values.shape} for {n} windows")
            self._check_finite(values, name)
        return aligned

    def _frame_time(self, frame_time, n: int) -> np.ndarray:
        """frame_time as float64 (n, frames), finite."""
        values = np.asarray(frame_time, np.float64)
        if values.ndim != 2 or len(values) != n:
            raise self._error(f"expected frame_time (n, frames), got {np.shape(frame_time)}")
        self._check_finite(values, FRAME_TIME)
        return values

    def _check_finite(self, values: np.ndarray, name: str) -> None:
        """Refuse the batch if any value is not finite, naming the first such window."""
        if not np.isfinite(values).all():
            bad = int(np.argmax(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)))
            raise self._error("not finite", bad, name)

    def _ensure_arrays(self, tokens: np.ndarray, batch: dict, aligned: dict) -> None:
        """On the part's first batch, create its arrays, shaped like the batch's first window."""
        if self.store.state["token_shape"] is not None:
            return
        if tokens.dtype == np.float16:
            first = {"tokens": tokens[:1]}
        else:
            try:
                first = self.store.layout.encode(tokens[:1])
            except ValueError as e:
                raise self._error(str(e), 0) from None
        frames = batch[FRAME_TIME].shape[1] if FRAME_TIME in batch else None
        self.store.create_arrays(
            first, tokens.shape[-1], frames, {k: v[:1] for k, v in aligned.items()}
        )

    def _match_frame_time(self, batch: dict) -> dict:
        """The batch as the part stores it: frame_time given with every batch of a part that
        has it, in as many frames per window; dropped for a part written before frame_time
        (read with nominal times)."""
        arrays = self.store.stream.arrays
        if FRAME_TIME not in arrays:
            return {k: v for k, v in batch.items() if k != FRAME_TIME}
        if FRAME_TIME not in batch:
            raise self._error("this part stores frame_time; give it with every batch")
        if batch[FRAME_TIME].shape[1] != arrays[FRAME_TIME].shape[1]:
            raise self._error(
                f"frame_time has {batch[FRAME_TIME].shape[1]} frames per window, this "
                f"part {arrays[FRAME_TIME].shape[1]}"
            )
        return batch

    def _enqueue(self, stored: list[dict[str, np.ndarray]], batch: dict, n: int) -> None:
        """Queue the windows for compression and the writer thread, and their per-window values
        for their files; write the per-window files they fill."""
        stream = self.store.stream
        # Compressed in the background; the writer thread takes each window when it is.
        windows = stream.compress(stored)
        if self._per_window is None:
            self._per_window = Pending(
                stream.per_window_arrays(), self.appended, stream.per_window_chunk()
            )
        self._per_window.add(batch, n)
        self.appended += n
        self._submit(Writes(windows))
        if filled := self._per_window.take(whole_files=True):
            stream.write_per_window(*filled)

    def _prepare(self, tokens: np.ndarray, checked: bool = False) -> list[dict[str, np.ndarray]]:
        """Check (or code) each window of a batch in the store's thread pool, into arrays of
        the store's own; a window the layout cannot store refuses the batch, named."""
        if checked:
            own = tokens.copy() if tokens.flags.writeable else tokens
            return [{"tokens": own[i : i + 1]} for i in range(len(own))]
        jobs = self.store.stream.prepare(tokens)
        for i, job in enumerate(jobs):
            if isinstance(job.exception(), ValueError):
                raise self._error(str(job.exception()), i)
        return [job.result() for job in jobs]

    def _submit(self, writes: Writes) -> None:
        """Hand windows and files to the writer thread, which writes them while the caller
        goes on; waits for the oldest trips while too many windows are not yet written."""
        windows = len(writes.windows)
        self._inflight.append((self.store.stream.submit(writes), windows))
        while len(self._inflight) > 1 and sum(n for _, n in self._inflight) > MAX_WINDOWS_IN_FLIGHT:
            self._wait_oldest()

    def abandon(self) -> None:
        """Wait for this video's writes in flight (their errors moot): it is being dropped."""
        with contextlib.suppress(Exception):
            self._wait()

    def _wait(self) -> None:
        """Wait for every trip to the writer thread; the first error is raised."""
        while self._inflight:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, _ = self._inflight.popleft()
        try:
            future.result()
        except BaseException:
            self._done = True  # windows were lost: this video can only be failed or replaced
            raise

    def _flush(self) -> None:
        """Write and fsync every window appended so far, arrays sized to them (the durable
        half of `commit` and `commit_piece`)."""
        store = self.store
        # The rest is done while the last windows are compressed and written: the per-window
        # values, and arrays sized to the windows appended (tokens: grown; a discarded video
        # may have left the others longer). Readers look no further than the commit record,
        # so growing an array early is safe.
        self._submit(Writes([], commit=True))
        if self._per_window is not None and (tail := self._per_window.take(False)):
            store.stream.write_per_window(*tail)
        store.stream.resize(self.appended)
        self._wait()
        row = len(store.state["videos"])
        if pieces.windows_of(store.state) and pieces.row_of(store.state) != row:
            # pieces from an earlier run, when the table had other rows after them
            n = pieces.windows_of(store.state)
            store.stream.write_per_window(self.first, {"video": np.full(n, row, np.int64)})
        store.make_durable(self.first, self.appended)

    def commit_piece(self) -> None:
        """Make the windows appended so far durable and recorded as pieces of this video
        (store/pieces.py), still invisible to readers: an interrupted run resumes after them."""
        self._check_live()
        if self.appended == self.first:
            return
        store = self.store
        try:
            self._flush()
            state = pieces.record(
                store.state,
                self.record.path,
                self.record.sha256,
                self.first,
                self.appended - self.first,
                len(store.state["videos"]),
            )
            store.record.publish(state)
        except OSError as e:
            self._done = True
            raise writable_error(store.root, e) from None

    def commit(self, n_frames: int | None = None, duration: float | None = None) -> None:
        """Make the video visible: data made durable first, then the part's record replaced."""
        self._check_live()
        if self.appended == self.first:
            raise self._error("no windows appended; record a failure instead")
        store = self.store
        try:
            self._flush()
            row = dataclasses.asdict(self.record)
            if n_frames is not None:
                row["n_frames"] = int(n_frames)
            if duration is not None:
                row["duration"] = float(duration)
            row.update(
                status="complete",
                reason="",
                first_window=self.first,
                n_windows=self.appended - self.first,
            )
            state = pieces.without(store.state)
            store.record.publish(
                {**state, "n_windows": self.appended, "videos": [*state["videos"], row]}
            )
            store.stream.mark_committed()
        except OSError as e:
            raise writable_error(store.root, e) from None
        finally:
            self._done = True


def _coordinates(n: int, **values) -> dict[str, np.ndarray]:
    """Each window coordinate as n values of its dtype (a scalar is every window's)."""
    return {
        name: np.broadcast_to(np.asarray(v, dtype=WINDOW_COORD_DTYPES[name]), (n,))
        for name, v in values.items()
    }


def open_writer(
    path,
    *,
    encoder: dict,
    preprocessing: dict,
    layout: Layout = Layout(),  # noqa: B008
    part: str | None = None,
    software_version: str = __version__,
    windows_per_shard: int | None = None,
    windows: dict | None = None,
) -> StoreWriter:
    """Create a store at `path` or open it for append, as one part (one writer process).

    A store with a different encoder, preprocessing or layout is refused (StoreIdentityError
    naming each differing field). Reopening a part by name resumes it after a crash.
    `windows_per_shard` applies to a new part (None: about 64 MiB of tokens per shard).
    `windows` marks a store of windows chosen otherwise than at the regular stride (e.g.
    `{"centred_on": "annotated frames", "frames_from": PATH}`); a store is never mixed.
    """
    if "://" in str(path):
        raise StoreError(
            f"{path}: writing goes to a local (or mounted shared) directory, not a URL"
        )
    part = part or default_part_name()
    if not PART_NAME.match(part):
        raise StoreError(f"part name {part!r} must be letters, digits, '.', '_' or '-'")
    root = Path(path)
    identity = {"encoder": encoder, "preprocessing": preprocessing, "layout": layout.to_dict()}
    try:
        open_root(root, identity, software_version, windows)
        return StoreWriter(root, layout, part, windows_per_shard, aligned_arrays(encoder))
    except OSError as e:
        raise writable_error(root, e) from None
