"""A deterministic synthetic interaction log in MicroLens' shape, for tests, benchmarks and the quick-start.

The log has structure a sequential model can learn and a popularity baseline cannot:

- Items belong to topics, are released on a day (users only see released items, so the last days hold
  cold-start items), have a base popularity that fades with age, and a title drawn from their topic's
  vocabulary (so a title encoder carries signal).
- Each item has a few *successors*: same-topic items released around the same time. With probability
  ``p_sequential`` a user's next item is a successor of their previous one (uniformly, whatever its
  popularity); otherwise it is drawn from the user's topic taste weighted by freshness x popularity
  (or, with probability ``p_popular``, from global popularity).
- Interactions fall on days with ``recent_fraction`` of them in the last ``recent_days``, at random
  times of day; a user's interactions are time-ordered, and a user never repeats an item (as in
  MicroLens, whose pairs are unique; a repeat could never be hit once history items are masked).

Everything that scales with the log is vectorised numpy: the MicroLens-100K preset takes seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

DAY_MS = 86_400_000
N_CANDIDATES = 5  # taste draws per interaction: fallbacks when a pick repeats the user's history

# Real English words per topic, so that a real sentence encoder (MiniLM in tests) places same-topic
# titles together; the templates add commas and quotes so the CSV writers and readers are exercised.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    name: tuple(words.split())
    for name, words in {
        "cooking": "recipe noodles dumplings kitchen spicy soup baking chef wok sauce grill breakfast",
        "pets": "kitten puppy cat dog hamster parrot rabbit fluffy paws adoption leash purring",
        "gaming": "gameplay boss speedrun console controller esports level quest loot arcade pixel raid",
        "travel": "beach mountain hostel passport island roadtrip temple sunset backpacking ferry map hike",
        "fitness": "workout squats cardio gym dumbbell stretching abs marathon yoga protein treadmill plank",
        "music": "guitar piano cover song concert drummer violin melody chorus singer band acoustic",
        "dance": "choreography dancer ballet hiphop breakdance tango moves salsa routine waltz studio stage",
        "comedy": "prank sketch joke parody stand-up funny bloopers sitcom skit roast meme satire",
        "beauty": "makeup lipstick skincare eyeliner foundation nails hairstyle serum blush contour mascara",
        "cars": "engine drift supercar garage turbo racing wheels exhaust sedan motorbike horsepower",
        "football": "goal striker penalty stadium dribble keeper derby freekick league tackle referee",
        "fashion": "outfit sneakers runway denim jacket thrift streetwear dress boutique lookbook tailoring",
        "science": "experiment chemistry physics telescope microscope laboratory molecule rocket planet",
        "crafts": "knitting origami pottery sewing woodwork embroidery glue scissors paper clay quilt",
        "gardening": "tomatoes seedlings compost greenhouse orchids pruning soil harvest flowers basil",
        "babies": "toddler newborn nursery stroller lullaby diaper crawling giggles bathtime firstborn",
        "anime": "manga cosplay ninja mecha shonen waifu episode opening studio villain sensei",
        "history": "empire castle pharaoh medieval battle dynasty ruins archaeology knight museum scroll",
        "finance": "stocks budget savings crypto investing dividends mortgage taxes inflation portfolio",
        "tech": "smartphone laptop unboxing gadget processor battery headphones review keyboard drone",
        "nature": "waterfall forest wildlife eagle river canyon glacier volcano meadow fog storm",
        "art": "painting sketch watercolor canvas portrait sculpture mural charcoal gallery easel",
        "family": "grandma wedding birthday cousins reunion picnic holiday siblings dinner party",
        "magic": "illusion cards trick magician levitation vanish mentalism coin sleight wand",
    }.items()
}
TITLE_TEMPLATES = (
    "{0} {1} {2}",
    "My {0} {1} routine",
    "{0} vs {1}: which is better?",
    'When the {0} meets "{1}", wow',
    "{0}, {1} and {2}",
    "Top 5 {0} {1} moments",
    "Trying {0} for the first time ({1})",
    "{0} {1} #{2}",
)


@dataclass(frozen=True)
class SynthConfig:
    """Shape and behaviour of a synthetic log; defaults give a mid-sized log (1k users, 60 days)."""

    n_users: int = 1000
    n_items: int = 500
    n_interactions: int = 20_000  # target; a few are lost when a user runs out of new items
    n_days: int = 60
    start: dt.date = dt.date(2022, 1, 1)  # UTC calendar date of day 0
    seed: int = 0
    n_topics: int = 12
    recent_fraction: float = 0.6  # share of interactions in the last `recent_days`
    recent_days: int = 14
    p_sequential: float = 0.5  # chance the next item is a successor of the previous one
    p_popular: float = 0.2  # among the other picks: chance of global popularity instead of taste
    n_successors: int = 4  # successors per item
    successor_window: int = 6  # successors are within this many same-topic releases of the item
    initial_item_fraction: float = 0.4  # items already released on day 0; the rest follow activity
    freshness_days: float = 20.0  # an item's appeal decays as exp(-age / freshness_days)
    popularity_sigma: float = 1.0  # lognormal spread of item base popularity
    taste_concentration: float = 0.3  # Dirichlet concentration of user tastes (small: few topics each)
    activity_shape: float = 0.7  # gamma shape of user activity (small: heavy-tailed counts)
    min_user_interactions: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.start, str):  # YAML / CLI give ISO strings
            object.__setattr__(self, "start", dt.date.fromisoformat(self.start))
        checks = {
            "n_users >= 1": self.n_users >= 1,
            f"n_topics in 1..{len(TOPIC_WORDS)}": 1 <= self.n_topics <= len(TOPIC_WORDS),
            "n_items >= n_topics": self.n_items >= self.n_topics,
            "1 <= recent_days < n_days": 1 <= self.recent_days < self.n_days,
            "min_user_interactions >= 1": self.min_user_interactions >= 1,
            "n_interactions >= n_users * min_user_interactions": self.n_interactions
            >= self.n_users * self.min_user_interactions,
            "min_user_interactions <= n_items // 2": self.min_user_interactions <= self.n_items // 2,
            "n_successors >= 1 and successor_window >= 1": self.n_successors >= 1
            and self.successor_window >= 1,
            "freshness_days, taste_concentration, activity_shape > 0": min(
                self.freshness_days, self.taste_concentration, self.activity_shape
            )
            > 0,
        }
        for name in ("recent_fraction", "p_sequential", "p_popular", "initial_item_fraction"):
            checks[f"0 <= {name} <= 1"] = 0.0 <= getattr(self, name) <= 1.0
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid SynthConfig: need {', '.join(failed)}")

    @classmethod
    def microlens_100k(cls, seed: int = 0) -> SynthConfig:
        """MicroLens-100K's shape: 100k users, 19,738 items, ~719k interactions over ~11 months."""
        return cls(
            n_users=100_000,
            n_items=19_738,
            n_interactions=719_405,
            n_days=335,  # ~11 months
            start=dt.date(2021, 11, 1),  # arbitrary: only the span matters
            seed=seed,
            n_topics=24,
            recent_fraction=0.65,  # most activity in the last 3 months, as in MicroLens
            recent_days=92,
            min_user_interactions=5,  # assumed: MicroLens subsets keep users with >= 5 interactions
            freshness_days=30.0,
        )

    @classmethod
    def small(cls, seed: int = 0) -> SynthConfig:
        """A few thousand interactions in three weeks: fast enough for any unit test."""
        return cls(
            n_users=300,
            n_items=200,
            n_interactions=6_000,
            n_days=21,
            seed=seed,
            n_topics=8,
            recent_fraction=0.5,
            recent_days=7,
            freshness_days=10.0,
            activity_shape=1.5,  # a lighter tail: 200 items cannot feed many 100-item users
        )

    def to_dict(self) -> dict[str, object]:
        """Plain values (the date as ISO text) for manifests and YAML."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["start"] = self.start.isoformat()
        return out


def generate_log(cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions: user_id, item_id, timestamp ms — canonical order; items: item_id, title, topic, release_day)."""
    rng = np.random.default_rng(cfg.seed)
    day_p = _day_distribution(cfg)
    topic, release, popularity = _items(cfg, rng, day_p)
    successors = _successors(cfg, rng, topic, release)

    # Users: topic tastes (popular topics attract more users) and heavy-tailed activity counts.
    topic_share = np.bincount(topic, minlength=cfg.n_topics) / cfg.n_items
    taste = rng.dirichlet(cfg.taste_concentration * cfg.n_topics * topic_share + 1e-3, size=cfg.n_users)
    counts = _activity_counts(cfg, rng)
    user = np.repeat(np.arange(cfg.n_users), counts)
    n = len(user)

    # Times: a day from the activity curve, a random moment in it; then each user's events in time order.
    day = rng.choice(cfg.n_days, size=n, p=day_p)
    # Stop 10 s before midnight so the tie-breaking millisecond shifts below never change the day.
    ms = day.astype(np.int64) * DAY_MS + rng.integers(0, DAY_MS - 10_000, size=n)
    order = np.lexsort((ms, user))
    user, day, ms = user[order], day[order], ms[order]
    while True:  # equal times within a user would make the order ambiguous: nudge by 1 ms
        tie = np.flatnonzero((user[1:] == user[:-1]) & (ms[1:] <= ms[:-1])) + 1
        if not len(tie):
            break
        ms[tie] = ms[tie - 1] + 1

    # Taste draws (fallbacks) for every event, then the sequential walk that picks among them.
    is_global = rng.random((n, N_CANDIDATES)) < cfg.p_popular
    # Inverse-CDF topic draws for all events at once: each user's taste CDF is shifted by the user's
    # index, so one searchsorted over the flattened CDFs serves every user (no n x n_topics matrix).
    cdf = np.cumsum(taste, axis=1)
    cdf = (cdf / cdf[:, -1:] + np.arange(cfg.n_users)[:, None]).ravel()
    queries = user[:, None] + rng.random((n, N_CANDIDATES))
    topic_draw = np.searchsorted(cdf, queries, side="right") - user[:, None] * cfg.n_topics
    topic_draw = np.where(is_global, -1, np.clip(topic_draw, 0, cfg.n_topics - 1))
    fallback = _sample_fresh_popular(
        np.repeat(day, N_CANDIDATES), topic_draw.ravel(), rng.random(n * N_CANDIDATES), topic, release,
        popularity, cfg.freshness_days,
    ).reshape(n, N_CANDIDATES)  # fmt: skip
    follow = rng.random(n) < cfg.p_sequential
    which = rng.integers(0, cfg.n_successors, size=n)
    item = _walk(counts, day, follow, which, successors, release, fallback)

    kept = item >= 0
    start_ms = int(pd.Timestamp(cfg.start, tz="UTC").value // 10**6)
    ids = _item_ids(release, rng)
    interactions = pd.DataFrame(
        {"user_id": user[kept] + 1, "item_id": ids[item[kept]], "timestamp": ms[kept] + start_ms}
    ).astype("int64")
    interactions = interactions.sort_values(["timestamp", "user_id", "item_id"], ignore_index=True)
    titles = _titles(topic, rng)
    items = pd.DataFrame(
        {"item_id": ids, "title": pd.Series(titles, dtype="str"), "topic": topic, "release_day": release}
    ).astype({"item_id": "int64", "topic": "int64", "release_day": "int64"})
    return interactions, items.sort_values("item_id", ignore_index=True)


def _day_distribution(cfg: SynthConfig) -> np.ndarray:
    p = np.full(cfg.n_days, (1 - cfg.recent_fraction) / (cfg.n_days - cfg.recent_days))
    p[-cfg.recent_days :] = cfg.recent_fraction / cfg.recent_days
    return p / p.sum()


def _items(cfg: SynthConfig, rng: np.random.Generator, day_p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per internal item index: topic, release day, base popularity."""
    topic_p = rng.dirichlet(np.full(cfg.n_topics, 5.0))
    topic = np.concatenate(
        [np.arange(cfg.n_topics), rng.choice(cfg.n_topics, cfg.n_items - cfg.n_topics, p=topic_p)]
    )
    # New items arrive as activity does, so the busy recent days also bring many cold-start items.
    release = np.where(
        rng.random(cfg.n_items) < cfg.initial_item_fraction, 0, rng.choice(cfg.n_days, cfg.n_items, p=day_p)
    )
    release[: cfg.n_topics] = 0  # one item per topic from day 0: no topic is ever empty
    popularity = rng.lognormal(0.0, cfg.popularity_sigma, cfg.n_items)
    return topic, release, popularity


def _successors(
    cfg: SynthConfig, rng: np.random.Generator, topic: np.ndarray, release: np.ndarray
) -> np.ndarray:
    """(n_items, n_successors) item indices: same-topic neighbours in release order (not the item itself,
    unless its topic has no other item)."""
    order = np.lexsort((rng.random(cfg.n_items), release, topic))  # by topic, then release day
    pos = np.empty(cfg.n_items, dtype=np.int64)
    pos[order] = np.arange(cfg.n_items)
    sizes = np.bincount(topic, minlength=cfg.n_topics)
    seg_start = (np.cumsum(sizes) - sizes)[topic][:, None]
    seg_size = sizes[topic][:, None]
    offset = rng.integers(1, cfg.successor_window + 1, size=(cfg.n_items, cfg.n_successors))
    offset *= np.where(rng.random(offset.shape) < 0.5, -1, 1)
    # Wrap around within the topic so every successor stays in the topic; a 1-item topic points at itself
    # (the walk then falls back to a taste draw, since the item is already in the history).
    own = pos[:, None] - seg_start
    rel = (own + offset) % seg_size
    rel = np.where((rel == own) & (seg_size > 1), (rel + 1) % seg_size, rel)  # wrapped onto itself
    return order[seg_start + rel]


def _activity_counts(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: a minimum plus a gamma-weighted share of the rest (sums to the target)."""
    extra_total = cfg.n_interactions - cfg.n_users * cfg.min_user_interactions
    weights = rng.gamma(cfg.activity_shape, size=cfg.n_users)
    counts = cfg.min_user_interactions + rng.multinomial(extra_total, weights / weights.sum())
    # Nobody can see more distinct items than exist; half the catalog is already an extreme user.
    return np.minimum(counts, cfg.n_items // 2)


def _sample_fresh_popular(
    day: np.ndarray,
    want_topic: np.ndarray,
    u: np.ndarray,
    topic: np.ndarray,
    release: np.ndarray,
    popularity: np.ndarray,
    freshness_days: float,
) -> np.ndarray:
    """One item per query, released by its day, ∝ popularity x freshness, within the topic (-1: any)."""
    n_topics = int(topic.max()) + 1
    by_topic = np.argsort(topic, kind="stable")
    sizes = np.bincount(topic, minlength=n_topics)
    seg_end = np.cumsum(sizes)
    seg_start = seg_end - sizes
    rel, pop = release[by_topic], popularity[by_topic]
    out = np.empty(len(day), dtype=np.int64)
    query_order = np.argsort(day, kind="stable")
    days, bounds = np.unique(day[query_order], return_index=True)
    for d, lo, hi in zip(days, bounds, [*bounds[1:], len(day)]):
        q = query_order[lo:hi]
        weight = np.where(rel <= d, pop * np.exp(-(d - rel) / freshness_days), 0.0)
        cum = np.concatenate([[0.0], np.cumsum(weight)])
        k = want_topic[q]
        a = np.where(k >= 0, cum[seg_start[k]], 0.0)
        b = np.where(k >= 0, cum[seg_end[k]], cum[-1])
        # A topic with nothing released yet falls back to the whole released catalog.
        empty = b <= a
        a, b = np.where(empty, 0.0, a), np.where(empty, cum[-1], b)
        pick = np.searchsorted(cum, a + u[q] * (b - a), side="right") - 1
        out[q] = by_topic[np.clip(pick, 0, len(by_topic) - 1)]
    return out


def _walk(
    counts: np.ndarray,
    day: np.ndarray,
    follow: np.ndarray,
    which: np.ndarray,
    successors: np.ndarray,
    release: np.ndarray,
    fallback: np.ndarray,
) -> np.ndarray:
    """Pick each event's item step by step, all users at once: the chosen successor of the previous item
    when ``follow`` and it is released, else the first taste draw not yet in the user's history; -1 if none."""
    starts = np.cumsum(counts) - counts
    by_count = np.argsort(-counts, kind="stable")  # users still active at step j are a prefix
    sorted_counts = counts[by_count]
    item = np.full(len(day), -1, dtype=np.int64)
    last = np.full(len(counts), -1, dtype=np.int64)
    for j in range(int(counts.max(initial=0))):
        users = by_count[: int(np.searchsorted(-sorted_counts, -j, side="left"))]
        idx = starts[users] + j
        prev = last[users]
        succ = successors[np.maximum(prev, 0), which[idx]]
        ok_succ = follow[idx] & (prev >= 0) & (release[succ] <= day[idx])
        cand = np.concatenate([np.where(ok_succ, succ, -1)[:, None], fallback[idx]], axis=1)
        history = item[starts[users][:, None] + np.arange(j)]
        valid = (cand >= 0) & ~(cand[:, :, None] == history[:, None, :]).any(axis=2)
        has = valid.any(axis=1)
        chosen = np.where(has, cand[np.arange(len(users)), valid.argmax(axis=1)], -1)
        item[idx] = chosen
        last[users] = np.where(has, chosen, prev)
    return item


def _item_ids(release: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Public ids 1..n in release order (like a platform's upload ids), ties broken at random."""
    order = np.lexsort((rng.random(len(release)), release))
    ids = np.empty(len(release), dtype=np.int64)
    ids[order] = np.arange(1, len(release) + 1)
    return ids


def _titles(topic: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A title per item from three distinct words of its topic (one word in ten from another topic, as noise)."""
    vocab = list(TOPIC_WORDS.values())
    n, widest = len(topic), max(len(bank) for bank in vocab)
    template = rng.integers(0, len(TITLE_TEMPLATES), n)
    noise = rng.random((n, 3)) < 0.1
    noise_topic = rng.integers(0, len(vocab), (n, 3))
    ranks = np.argsort(rng.random((n, widest)), axis=1)  # a random word order per item
    out = []
    for i in range(n):
        own = vocab[topic[i]]
        picks = [r for r in ranks[i] if r < len(own)][:3]
        words = [
            vocab[noise_topic[i, k]][picks[k] % len(vocab[noise_topic[i, k]])]
            if noise[i, k]
            else own[picks[k]]
            for k in range(3)
        ]
        out.append(TITLE_TEMPLATES[template[i]].format(*words))
    return out


def write_microlens(interactions: pd.DataFrame, items: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``MicroLens-100k_pairs.csv`` (user,item,timestamp ms) and ``MicroLens-100k_title_en.csv``
    (item,title; quoted where needed). Returns {"pairs": path, "titles": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pairs": out / "MicroLens-100k_pairs.csv", "titles": out / "MicroLens-100k_title_en.csv"}
    pairs = interactions.sort_values(["user_id", "timestamp", "item_id"])  # MicroLens lists by user
    pairs.rename(columns={"user_id": "user", "item_id": "item"})[["user", "item", "timestamp"]].to_csv(
        paths["pairs"], index=False, lineterminator="\n"
    )
    items[["item_id", "title"]].rename(columns={"item_id": "item"}).to_csv(
        paths["titles"], index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL
    )
    return paths


def write_microlens_seq(interactions: pd.DataFrame, path: str | Path) -> Path:
    """Write the per-user sequence form: ``user<TAB>item item …`` in time order, one line per user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"])
    users = ordered["user_id"].to_numpy()
    items = ordered["item_id"].to_numpy().astype(str)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], cuts]) if len(users) else np.array([], dtype=np.int64)
    lines = (
        [f"{users[s]}\t{' '.join(chunk)}\n" for s, chunk in zip(starts, np.split(items, cuts))]
        if len(users)
        else []
    )
    path.write_text("".join(lines), encoding="utf-8")
    return path
