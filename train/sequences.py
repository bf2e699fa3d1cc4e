"""Training sequences: per-user histories cut into fixed windows that every sequence model trains on.

Input: interactions as item indices (1..n) with user ids and timestamps. A user's time-ordered
sequence ``s`` of length n is cut into windows of ``history_len + 1`` items with stride
``history_len`` (consecutive windows overlap by one item), left-padded with 0. Within a window,
position t predicts position t+1; so every interaction except a user's first is a training target
exactly once, and each target sees at most ``history_len`` items of history.
"""

from __future__ import annotations

import numpy as np


def sequence_windows(users: np.ndarray, items: np.ndarray, history_len: int) -> np.ndarray:
    """Windows ``[n_windows, history_len + 1]`` (int64, left-padded with 0).

    ``users`` and ``items`` must already be in time order within each user (any order across users);
    the sort below is stable, so equal users keep their relative order.
    """
    if len(users) != len(items):
        raise ValueError("users and items must have the same length")
    if len(users) == 0:
        return np.zeros((0, history_len + 1), dtype=np.int64)
    order = np.argsort(users, kind="stable")
    u, it = users[order], items[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    lengths = np.diff(np.r_[starts, len(u)])
    # Windows per user: ceil((n - 1) / L); users with one interaction give none.
    n_win = np.maximum(lengths - 1, 0)
    n_win = (n_win + history_len - 1) // history_len
    total = int(n_win.sum())
    win_user = np.repeat(np.arange(len(starts)), n_win)
    win_rank = np.arange(total) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    w_start = starts[win_user] + win_rank * history_len
    w_len = np.minimum(history_len + 1, starts[win_user] + lengths[win_user] - w_start)
    out = np.zeros((total, history_len + 1), dtype=np.int64)
    # Fill right-aligned: column c holds element w_start + (c - (L+1 - w_len)).
    cols = np.arange(history_len + 1)
    offset = cols[None, :] - (history_len + 1 - w_len)[:, None]
    valid = offset >= 0
    src = (w_start[:, None] + offset)[valid]
    out[valid] = it[src]
    return out


def left_pad(histories: np.ndarray, pad_from: int = -1) -> np.ndarray:
    """Map evaluation histories padded with ``pad_from`` to index-space padding 0 (values unchanged)."""
    out = histories.copy()
    out[out == pad_from] = 0
    return out
