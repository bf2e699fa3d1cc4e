"""A static caption browser: what the models saw and heard in each clip, and who its neighbours are.

One self-contained HTML page (thumbnails inlined as JPEG data URIs) with a card per item: a frame,
the title, the VLM caption, the transcript and sound events, the audio description, and the
nearest items by every feature set (cosine similarity), so a reader can judge with their own eyes
whether a representation groups clips that belong together. Captions from ``tiny:`` stand-in models
are random text and are marked as such.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

THUMB_WIDTH = 192


def thumbnail(video: Path, at_s: float = 1.0) -> str | None:
    """A JPEG data URI of the frame at ``at_s`` seconds (or the last one before the end); None if unreadable."""
    import av

    try:
        with av.open(str(video)) as container:
            frame = None
            for frame in container.decode(video=0):
                if frame.time is not None and frame.time >= at_s:
                    break
            if frame is None:
                return None
            img = frame.to_image()
    except (av.error.FFmpegError, OSError):
        return None
    img.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def neighbours(
    store_root: Path, item_ids: np.ndarray, shown: np.ndarray, k: int = 3
) -> dict[str, np.ndarray]:
    """Per feature set: the ``k`` most cosine-similar catalog items of each shown item (ids; -1 = none)."""
    from featurize.stores import FeatureStore

    out: dict[str, np.ndarray] = {}
    pos = {int(i): n for n, i in enumerate(item_ids)}
    for path in sorted((store_root / "features").iterdir()):
        store = FeatureStore(store_root, path.name)
        if not path.is_dir() or not store.parts():
            continue
        matrix, ok = store.read_matrix(item_ids)
        x = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        rows = np.array([pos[int(i)] for i in shown])
        sims = x[rows] @ x.T
        sims[:, ~ok] = -np.inf
        sims[np.arange(len(rows)), rows] = -np.inf  # not its own neighbour
        top = np.argsort(-sims, axis=1)[:, :k]
        ids = item_ids[top]
        ids[~ok[rows]] = -1
        out[path.name] = ids
    return out


def _captions(store_root: Path) -> dict[str, pd.DataFrame]:
    from featurize.stores import CaptionStore

    out = {}
    root = store_root / "captions"
    for path in sorted(root.iterdir()) if root.exists() else []:
        store = CaptionStore(store_root, path.name)
        if path.is_dir() and store.parts():
            out[path.name] = store.read().set_index("item_id")
    return out


def _pick(item_ids: np.ndarray, n: int, cases: pd.DataFrame | None) -> np.ndarray:
    """Up to ``n`` items: the most frequent test targets first (the clips the report is about), then the rest."""
    order = list(item_ids)
    if cases is not None and len(cases):
        hot = cases["item_id"].value_counts().index.to_numpy(np.int64)
        order = list(hot) + [i for i in item_ids if i not in set(hot)]
    return np.array(order[:n], dtype=np.int64)


def write_browser(
    store_root: str | Path,
    titles_csv: str | Path,
    videos_dir: str | Path,
    out_html: str | Path,
    *,
    cases: pd.DataFrame | None = None,
    n_items: int = 48,
) -> Path:
    """Write the browser page for up to ``n_items`` items of the catalog; returns its path."""
    from featurize.catalog import CatalogConfig, load_catalog
    from featurize.refs import parse_ref

    store_root, out_html = Path(store_root), Path(out_html)
    catalog = load_catalog(CatalogConfig(titles=str(titles_csv), videos_dir=str(videos_dir)))
    item_ids = catalog["item_id"].to_numpy(np.int64)
    title = dict(zip(item_ids.tolist(), catalog["title"].astype(str)))
    shown = _pick(item_ids, n_items, cases)
    near = neighbours(store_root, item_ids, shown)
    caps = _captions(store_root)

    def stand_in(df: pd.DataFrame) -> bool:
        models = df["model"].dropna().astype(str).unique()
        return any(parse_ref(m).is_stand_in for m in models if ":" in m)

    cards = []
    paths = dict(zip(item_ids.tolist(), catalog["video_path"]))
    for item in shown.tolist():
        thumb = thumbnail(Path(paths[item])) if paths.get(item) else None
        img = f'<img src="{thumb}" alt="item {item}">' if thumb else "<div class=noimg>no frame</div>"
        rows = []
        for name, df in caps.items():
            if item not in df.index:
                continue
            r = df.loc[item]
            flag = " <span class=stand>stand-in: random text</span>" if stand_in(df) else ""
            text = r["text"] if r["status"] == "ok" else f"error: {r['error']}"
            rows.append(f"<dt>{html.escape(name)}{flag}</dt><dd>{html.escape(str(text))}</dd>")
            for extra in ("transcript", "sound_events"):
                if extra in df.columns and isinstance(r[extra], str) and r[extra]:
                    value = r[extra]
                    if extra == "sound_events":
                        value = _events_text(value)
                    rows.append(f"<dt>{extra.replace('_', ' ')}</dt><dd>{html.escape(value)}</dd>")
        nn = []
        for fs, ids in near.items():
            row = ids[list(shown).index(item)]
            names = ", ".join(f"{int(j)}: {html.escape(title.get(int(j), '?'))}" for j in row if j >= 0)
            nn.append(f"<tr><th>{html.escape(fs)}</th><td>{names or '-'}</td></tr>")
        cards.append(
            f"<section><div class=head>{img}<div><h2>item {item}</h2>"
            f"<p class=title>{html.escape(title.get(item, ''))}</p></div></div>"
            f"<dl>{''.join(rows)}</dl><table class=nn><caption>nearest items by feature set</caption>"
            f"{''.join(nn)}</table></section>"
        )
    page = _PAGE.format(
        n=len(shown), total=len(item_ids), root=html.escape(str(store_root)), cards="\n".join(cards)
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(out_html)
    return out_html


def _events_text(value: str) -> str:
    try:
        events = json.loads(value)
    except ValueError:
        return value
    if not isinstance(events, list):
        return value
    return (
        "; ".join(f"{e.get('label')} {e.get('start', 0):.1f}-{e.get('end', 0):.1f}s" for e in events)
        or "none"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seewhy caption browser</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; max-width: 1100px; }}
section {{ border-top: 1px solid #ccc; padding: 1em 0; }}
.head {{ display: flex; gap: 1em; align-items: center; }}
h2 {{ margin: 0; font-size: 1.1em; }} .title {{ font-size: 1.2em; margin: .2em 0; }}
dt {{ font-weight: 600; margin-top: .4em; }} dd {{ margin: 0 0 0 1em; white-space: pre-wrap; }}
.stand {{ color: #a33; font-weight: 400; font-size: .9em; }}
table.nn {{ margin-top: .6em; border-collapse: collapse; }} table.nn th {{ text-align: left; padding-right: 1em;
  font-weight: 500; color: #555; }} caption {{ text-align: left; color: #555; }}
.noimg {{ width: 192px; height: 108px; background: #eee; }}
</style></head><body>
<h1>seewhy caption browser</h1>
<p>{n} of {total} items (the most frequent test targets first). Stores: <code>{root}</code>.
Captions from <code>tiny:</code> stand-in models are random text: their rows in the report are flagged too.</p>
{cards}
</body></html>
"""
