"""Training windows: every interaction but a user's first is a target exactly once, history <= L."""

import numpy as np
import pytest

from train.sequences import sequence_windows


def _brute(users, items, L):
    """Targets (user, target, history tuple) implied by windows, computed the slow way."""
    out = []
    for u in dict.fromkeys(users):
        seq = [i for uu, i in zip(users, items) if uu == u]
        for start in range(0, max(len(seq) - 1, 0), L):
            win = seq[start : start + L + 1]
            for t in range(1, len(win)):
                out.append((int(win[t]), tuple(int(x) for x in win[:t])))
    return sorted(out)


def _from_windows(w):
    out = []
    for row in w:
        real = [int(x) for x in row if x != 0]
        for t in range(1, len(real)):
            out.append((real[t], tuple(real[:t])))
    return sorted(out)


@pytest.mark.parametrize("L", [1, 3, 10])
def test_windows_match_brute_force(L):
    rng = np.random.default_rng(L)
    users = np.repeat(np.arange(30), rng.integers(1, 40, 30))
    rng.shuffle(users)  # users interleaved; per-user order is the array order
    items = rng.integers(1, 500, len(users))
    w = sequence_windows(users, items, L)
    assert w.shape[1] == L + 1
    assert _from_windows(w) == _brute(list(users), list(items), L)
    # every interaction except each user's first is a target exactly once
    assert len(_from_windows(w)) == len(users) - len(np.unique(users))


def test_windows_left_padded_and_single_interaction_users_dropped():
    w = sequence_windows(np.array([5, 5, 7]), np.array([11, 12, 13]), 3)
    assert w.tolist() == [[0, 0, 11, 12]]
    assert sequence_windows(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4).shape == (0, 5)
