"""`extract --frames-from`: windows centred on annotated frames (i-7..i+8, clamped at the ends),
checked against brute force, and stores of such windows marked and never mixed."""

import numpy as np
import pytest

from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.windows import CentredAssembler, centred_starts


def brute(centres, n, L, K):
    """Per distinct window: its frames, with the window inside the video where it fits."""
    out = {}
    for c in sorted(set(centres)):
        if c >= n:
            continue
        start = max(0, min(c - (L // 2 - 1) * K, n - 1 - (L - 1) * K))
        frames = [start + j * K for j in range(L)]
        out[start] = [min(f, start + ((n - 1 - start) // K) * K) for f in frames]
    return [out[s] for s in sorted(out)]


@pytest.mark.parametrize("n", [5, 16, 17, 40, 73])
@pytest.mark.parametrize("step", [1, 2])
def test_centred_windows_match_brute_force(n, step):
    prep = Preprocessing(frame_size=18, frame_step=step)
    rng = np.random.default_rng(n * step)
    centres = list(rng.integers(0, n, 6)) + [0, n - 1, n + 3]
    asm = CentredAssembler(prep, centres)
    got = []
    for f in range(n):
        rgb = np.full((18, 18, 3), f % 256, np.uint8) if asm.needs(f) else None
        got += asm.push(f, f / 10, rgb)
    got += asm.finish()
    want = brute(centres, n, 16, step)
    assert [list(w.frame_indices) for w in got] == want
    assert [w.start_frame for w in got] == centred_starts(centres, n, prep)  # what dry runs count
    for w in got:  # the pixels are those of the frames named, and the centre sits at 7
        assert (w.pixels[:, 0, 0, 0] == np.array(w.frame_indices) % 256).all()
        assert w.n_valid_frames == len(set(w.frame_indices))
        assert w.start_time == pytest.approx(w.start_frame / 10)
