"""Static neuron browser: an index of every channel and one page per channel, opened from disk.

Layout of the output folder:
  index.html, style.css, browser.js     the sortable, filterable channel table
  data.js                               the table rows (a script, because file:// pages cannot fetch JSON)
  channels/<layer>/<channel>.html       one page per channel: summary, activation plot, clusters, patches
  sprites/<layer>/<channel>.jpg         the channel's patch thumbnails tiled into one JPEG (rule `sprites` makes
                                        them from the top-K table: `thumbs.build_sprites`; linked in here)
Each thumbnail is an <img> of the sprite shifted with object-position, so a page loads one small file.
The page shells, style sheet and script are files in assets/; the per-channel fragments are built here.

Only real channels are shown (OR-units are validation devices: `channels_only`), ranked by the
polysemanticity index with PSI beside it. Two marks show what the index sees: a channel whose
clusters carry the same concept name (concept_1) gets a "same name" badge, and a dead channel
(status "dead...") shows no clusters and no names, only "dead: never fires" (its "top" patches are
arbitrary images, so their clusters and names would describe noise).
"""

from __future__ import annotations

import html
import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from ..calibration import channels_only
from ..errors import StageError
from ..io import atomic_path
from ..runtime import Progress, get_logger
from .thumbs import SPRITE_COLS, SPRITE_INDEX, SPRITE_KEYS, located, place_sprite, sprite_file, sprite_layout

# Columns of the index table: (key, header, kind). Kinds drive formatting and sorting in browser.js.
INDEX_COLUMNS = [
    ("layer", "layer", "text"),
    ("channel", "channel", "int"),
    ("index", "index", "num"),
    ("psi", "PSI", "num"),
    ("log_psi", "log PSI", "num"),
    ("S_hat", "Ŝ", "num"),
    ("Q_hat", "Q̂", "num"),
    ("D_hat", "D̂", "num"),
    ("k_hat", "K̂", "int"),
    ("clusters", "clusters (size)", "text"),
    ("status", "status", "text"),
    ("top_activation", "top act.", "num"),
]
# Per-row fields after the columns (not shown as columns): the channel page's link, and the concept
# names that two or more of the channel's clusters carry (null when every name is distinct).
ROW_FIELDS = ["href", "same_name"]
SORT_KEY = "index"  # the list opens ranked by the index, highest first
DEAD_TEXT = "dead: never fires"


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """The text of a file in assets/ (package data, so it is installed with the code)."""
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


def _page(name: str, **slots) -> str:
    """An assets/ page shell with its `$slot`s filled (string.Template: inserted text is not re-scanned)."""
    return Template(_asset(name)).substitute(**slots)


def slug(name: str) -> str:
    """A file-name-safe form of a layer name (layer names may hold dots, never slashes here)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def channel_href(layer: str, channel: int) -> str:
    return f"channels/{slug(layer)}/{int(channel)}.html"


def _num(x):
    """JSON-safe number: NaN/inf become null."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(x, digits: int = 3) -> str:
    x = _num(x)
    return "—" if x is None else f"{x:.{digits}f}"


def _cluster_label(row) -> str:
    name = row.get("concept_1")
    name = str(name) if isinstance(name, str) and name else f"cluster {int(row['cluster'])}"
    return f"{name} ({int(row['size'])})"


def is_dead(row) -> bool:
    """A channel that never fires (status "dead..."): its top patches are arbitrary images."""
    return str(row.get("status", "ok")).startswith("dead")


def same_names(cluster_rows) -> list[str]:
    """Concept names (concept_1) that two or more of a channel's clusters carry, sorted.

    Several clusters under one name (say two "blue disc" clusters) are not several concepts, however
    well they separate: the browser marks such a channel so that its index can be read accordingly.
    """
    seen: dict[str, int] = {}
    for r in cluster_rows:
        name = r.get("concept_1")
        if isinstance(name, str) and name.strip():
            seen[name.strip()] = seen.get(name.strip(), 0) + 1
    return sorted(n for n, c in seen.items() if c > 1)


def same_name_text(names: list[str]) -> str:
    return "same name: " + ", ".join(names)


def _real_channels(psi: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The real channels of every layer's psi table, checked for the index column."""
    out = {}
    for layer, df in psi.items():
        if "index" not in df.columns:
            raise ValueError(f"psi table of layer {layer!r} lacks column 'index' (the polysemanticity index); "
                             "it must come from the calibrate stage: rerun it")
        out[layer] = channels_only(df)
    return out


def index_rows(psi: dict[str, pd.DataFrame], clusters: dict[str, pd.DataFrame]) -> list[list]:
    """One row per real channel of every layer: INDEX_COLUMNS, then ROW_FIELDS (page link, repeated names).

    Dead channels get no cluster names and no same-name flag.
    """
    rows = []
    for layer, df in _real_channels(psi).items():
        names, records = {}, {}
        cl = clusters.get(layer)
        if cl is not None and len(cl):
            # Biggest cluster first in the name list.
            for r in cl.sort_values(["channel", "size", "cluster"], ascending=[True, False, True]).to_dict("records"):
                names.setdefault(int(r["channel"]), []).append(_cluster_label(r))
                records.setdefault(int(r["channel"]), []).append(r)
        for r in df.sort_values("channel").to_dict("records"):
            ch = int(r["channel"])
            k = _num(r.get("k_hat"))
            dead = is_dead(r)
            repeated = [] if dead else same_names(records.get(ch, []))
            rows.append(
                [
                    str(layer), ch, _num(r.get("index")), _num(r.get("psi")), _num(r.get("log_psi")),
                    _num(r.get("S_hat")), _num(r.get("Q_hat")), _num(r.get("D_hat")), None if k is None else int(k),
                    "" if dead else " · ".join(names.get(ch, [])), str(r.get("status", "ok")),
                    _num(r.get("top_activation")),
                    channel_href(layer, ch), repeated or None,
                ]
            )
    return rows


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def activation_svg(ranks, acts, clusters, width: int = 420, height: int = 130) -> str:
    """Inline SVG of activation against rank, points coloured by cluster."""
    ranks, acts = np.asarray(ranks, float), np.asarray(acts, float)
    if len(acts) == 0 or not np.isfinite(acts).any():
        return "<p>No activation values.</p>"
    pad = 34
    lo, hi = float(np.nanmin(acts)), float(np.nanmax(acts))
    lo, hi = (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)
    rmax = max(float(ranks.max()), 1.0)
    px = lambda r: pad + (width - pad - 8) * r / rmax  # noqa: E731
    py = lambda a: 8 + (height - pad - 8) * (hi - a) / (hi - lo)  # noqa: E731
    pts = []
    for r, a, c in zip(ranks, acts, clusters):
        if np.isfinite(a):
            pts.append(f'<circle class="c{int(c) % 8}" cx="{px(r):.1f}" cy="{py(a):.1f}" r="3">'
                       f"<title>rank {int(r)}: {a:.4g} (cluster {int(c)})</title></circle>")
    axis = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 8}" y2="{height - pad}" class="axis"/>'
        f'<line x1="{pad}" y1="8" x2="{pad}" y2="{height - pad}" class="axis"/>'
        f'<text x="{pad}" y="{height - pad + 14}" class="tick">0</text>'
        f'<text x="{width - 8}" y="{height - pad + 14}" class="tick" text-anchor="end">{int(rmax)}</text>'
        f'<text x="{(width + pad) / 2}" y="{height - 4}" class="tick" text-anchor="middle">rank</text>'
        f'<text x="{pad - 4}" y="14" class="tick" text-anchor="end">{hi:.3g}</text>'
        f'<text x="{pad - 4}" y="{height - pad}" class="tick" text-anchor="end">{lo:.3g}</text>'
    )
    return (f'<svg class="acts" width="{width}" height="{height}" role="img" aria-label="activation by rank">'
            f'{axis}{"".join(pts)}</svg>')


def channel_page(layer: str, row: dict, patches: list[dict], clusters: dict[int, dict], sprite_cols: int,
                 thumb: int, prev_href: str | None, next_href: str | None, class_names: dict,
                 causal: dict | None = None) -> str:
    """The HTML of one channel page. `patches` are records in sprite order (thumbnail i = patches[i]);
    `clusters` maps cluster id to its clusters/<layer>.parquet record. `causal` (channels the insertion
    protocol tested): the channel's row of interventions/<layer>_causal.parquet, with its clusters' tests
    under "clusters" ({cluster: record of the trial table's Cluster rows}).

    A dead channel's page has the summary and "dead: never fires" only: no clusters, names or patches.
    A channel whose clusters share a concept name gets a "same name" badge, and so do those clusters.
    """
    e = html.escape
    ch = int(row["channel"])
    up = "../../"
    sprite = f"{up}sprites/{slug(layer)}/{ch}.jpg"
    nav = [f'<a href="{up}index.html">all channels</a>']
    if prev_href:
        nav.append(f'<a rel="prev" href="{up}{prev_href}">← previous</a>')
    if next_href:
        nav.append(f'<a rel="next" href="{up}{next_href}">next →</a>')
    summary = [
        ("index", _fmt(row.get("index"), 4)), ("PSI", _fmt(row.get("psi"), 4)), ("log PSI", _fmt(row.get("log_psi"))),
        ("S (raw) / Ŝ", f'{_fmt(row.get("S"))} / {_fmt(row.get("S_hat"))}'),
        ("Q (raw) / Q̂", f'{_fmt(row.get("Q"))} / {_fmt(row.get("Q_hat"))}'),
        ("D (raw) / D̂", f'{_fmt(row.get("D"), 4)} / {_fmt(row.get("D_hat"))}'),
        ("K̂", "—" if _num(row.get("k_hat")) is None else str(int(row["k_hat"]))),
        ("top activation", _fmt(row.get("top_activation"), 4)), ("status", e(str(row.get("status", "ok")))),
    ]
    if "ne_S" in row:  # the model's own view (neuron embeddings)
        summary += [
            ("neuron view: S / K̂", f'{_fmt(row.get("ne_S"))} / {_fmt(row.get("ne_k_hat"), 0)}'),
            ("neuron view: Q / ARI with CLIP", f'{_fmt(row.get("ne_Q"))} / {_fmt(row.get("ne_ari"))}'),
            ("Foote clusters", _fmt(row.get("foote_k"), 0)),
        ]
    if causal is not None:
        summary.append(("causal polysemanticity (insertion)",
                        f'{int(causal["n_driving"])} of {int(causal["n_clusters"])} clusters drive it on their own, '
                        f'{int(causal["n_causes"])} distinct cause(s)'))
    summary_html = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)
    page = dict(layer=e(layer), channel=ch, up=up, nav=" · ".join(nav), summary=summary_html)
    if is_dead(row):
        dead = f'<p class="badges"><span class="badge dead">{DEAD_TEXT}</span></p>'
        return _page("channel.html", **page, badges=dead, chart="", sections="")

    repeated = same_names(clusters[c] for c in sorted(clusters))
    badges = ""
    if repeated:
        badges = (f'<p class="badges"><span class="badge same-name">{e(same_name_text(repeated))}</span> '
                  '<span class="detail">two or more clusters carry the same concept name: several clusters, '
                  'one name</span></p>')
    groups: dict[int, list[tuple[int, dict]]] = {}
    for pos, p in enumerate(patches):
        groups.setdefault(int(p["cluster"]), []).append((pos, p))
    sections = ["<h2>Clusters</h2>"]
    for cl in sorted(groups):
        members = groups[cl]
        ci = clusters.get(cl)
        mark = ""
        if ci is not None:
            name = str(ci.get("concept_1") or "").strip()
            title = e(name) or f"cluster {cl}"
            if name in repeated:
                mark = ' <span class="badge same-name">same name</span>'
            detail = (f'size {int(ci["size"])} · silhouette {_fmt(ci.get("silhouette"))} · '
                      f'gap {_fmt(ci.get("gap"), 4)} · best match {_fmt(ci.get("similarity_1"))} · '
                      f'runner-up “{e(str(ci.get("concept_2") or ""))}”')
        else:
            title, detail = f"cluster {cl}", f"size {len(members)}"
        ins = (causal or {}).get("clusters", {}).get(cl)
        if ins is not None:
            verdict = (f'<span class="badge drives">drives it (cause {int(ins["cluster_cause"])})</span>'
                       if bool(ins["cluster_drives"]) else "does not drive it")
            detail += (f' · inserted into neutral images: {_fmt(ins["cluster_diff_mean"])} of top-1 above Random '
                       f'[{_fmt(ins["cluster_diff_ci_low"])}, {_fmt(ins["cluster_diff_ci_high"])}], '
                       f'Holm p {_pval(ins["cluster_pvalue_holm"])}, d_z {_fmt(ins["cluster_cohens_dz"], 2)}: {verdict}')
        figs = _figures(members, sprite, sprite_cols, thumb, class_names)
        sections.append(
            f'<section class="cluster{" same-name" if mark else ""}" data-cluster="{cl}"><h3>'
            f'<span class="swatch c{cl % 8}"></span>Cluster {cl}: {title}{mark}</h3><p class="detail">{detail}</p>'
            f'<div class="patches">{"".join(figs)}</div></section>'
        )
    if not patches:
        sections.append("<p>No mined patches for this channel.</p>")
    elif "ne_cluster" in patches[0] and int(patches[0]["ne_cluster"]) >= 0:
        sections.append(_neuron_view(patches, sprite, sprite_cols, thumb, class_names))
    chart = ""
    if patches:
        chart = ("<div><h2>Activations of the mined patches</h2>"
                 + activation_svg([p["rank"] for p in patches], [p["activation"] for p in patches],
                                  [p["cluster"] for p in patches]) + "</div>")
    return _page("channel.html", **page, badges=badges, chart=chart, sections="".join(sections))


def _figures(members: list[tuple[int, dict]], sprite: str, sprite_cols: int, thumb: int, class_names: dict) -> list:
    """Thumbnails (from the channel's sprite) of (sprite position, patch record) pairs."""
    e, figs = html.escape, []
    for pos, p in members:
        rr, cc = divmod(pos, sprite_cols)
        label = p.get("label")
        cname = "" if label is None else e(str(class_names.get(int(label), label)))
        figs.append(
            f'<figure><img class="thumb" src="{sprite}" width="{thumb}" height="{thumb}" alt="rank {int(p["rank"])}" '
            f'style="object-position:-{cc * thumb}px -{rr * thumb}px" loading="lazy">'
            f'<figcaption>#{int(p["rank"])} · {float(p["activation"]):.3g}<br>{cname}</figcaption></figure>'
        )
    return figs


def _neuron_view(patches: list[dict], sprite: str, sprite_cols: int, thumb: int, class_names: dict) -> str:
    """The same patches grouped by their clusters on the model's neuron embeddings (folded by default).

    Those clusters have no concept names: the neuron view has no text; they are compared with the
    CLIP clusters by the colour of each patch's CLIP cluster."""
    groups: dict[int, list[tuple[int, dict]]] = {}
    for pos, p in enumerate(patches):
        groups.setdefault(int(p["ne_cluster"]), []).append((pos, p))
    parts = []
    for cl in sorted(groups):
        members = groups[cl]
        clip = sorted({int(p["cluster"]) for _, p in members})
        swatches = "".join(f'<span class="swatch c{c % 8}" title="CLIP cluster {c}"></span>' for c in clip)
        parts.append(
            f'<section class="cluster neuron" data-ne-cluster="{cl}"><h3>Neuron cluster {cl}</h3>'
            f'<p class="detail">size {len(members)} · CLIP clusters of its patches {swatches}</p>'
            f'<div class="patches">{"".join(_figures(members, sprite, sprite_cols, thumb, class_names))}</div></section>'
        )
    return ('<details class="neuron-view"><summary>Clustered on the model\'s neuron embeddings '
            "(its own view of each patch, docs/neuron_embeddings.md)</summary>" + "".join(parts) + "</details>")


def _pval(p) -> str:
    """A p-value with two significant digits (scientific when small); an em dash when missing."""
    return "—" if _num(p) is None else f"{float(p):.2g}"


def causal_records(channels: pd.DataFrame, trials: pd.DataFrame) -> dict[int, dict]:
    """{channel: its row of the per-channel causal table, with "clusters": {cluster: its insertion test}}."""
    cols = ["channel", "cluster", "cluster_diff_mean", "cluster_diff_ci_low", "cluster_diff_ci_high",
            "cluster_pvalue_holm", "cluster_cohens_dz", "cluster_drives", "cluster_cause"]
    out = {int(r["channel"]): dict(r, clusters={}) for r in channels.to_dict("records")}
    if "protocol" in trials and not channels.empty:
        rows = trials[(trials["protocol"] == "insert") & (trials["condition"] == "Cluster")]
        for r in rows.drop_duplicates(["channel", "cluster"])[cols].to_dict("records"):
            if int(r["channel"]) in out:
                out[int(r["channel"])]["clusters"][int(r["cluster"])] = r
    return out


def _records_by_channel(df: pd.DataFrame | None, sort: list[str]) -> dict[int, list[dict]]:
    """Plain-dict records grouped by channel (building pages from dicts is far cheaper than from frames)."""
    if df is None or df.empty:
        return {}
    out: dict[int, list[dict]] = {}
    for r in df.sort_values(sort).to_dict("records"):
        out.setdefault(int(r["channel"]), []).append(r)
    return out


def _check_sprites(layer: str, shown: dict[int, list[dict]], index: pd.DataFrame, sprites_dir: Path) -> None:
    """The sprites show, thumbnail for thumbnail, the patches each shown channel's page lists."""
    want = pd.DataFrame([{k: p[k] for k in SPRITE_KEYS} for ch in sorted(shown) for p in shown[ch]],
                        columns=SPRITE_KEYS).astype(np.int64)
    have = index[index["channel"].isin(want["channel"].unique())].sort_values(["channel", "rank"], kind="stable")
    have = have[SPRITE_KEYS].astype(np.int64).reset_index(drop=True)
    if len(have) == len(want) and (have.to_numpy() == want.to_numpy()).all():
        return
    n = min(len(have), len(want))
    bad = np.flatnonzero((have.to_numpy()[:n] != want.to_numpy()[:n]).any(axis=1))
    # the first row that differs, else the first row one side lacks
    ch = int(want["channel"].iloc[bad[0]] if len(bad) else (want if len(want) > n else have)["channel"].iloc[n])
    raise StageError(f"browser, layer {layer!r}, channel {ch}: the sprites in {sprites_dir} show other patches than "
                     f"patches/{layer}.parquet (the two come from different runs or settings); rerun the sprites: "
                     "snakemake ... --forcerun sprites")


def build_browser(out_dir: str | Path, psi: dict[str, pd.DataFrame], clusters: dict[str, pd.DataFrame],
                  patches: dict[str, pd.DataFrame], dataset: pd.DataFrame, sprites: dict[str, str | Path],
                  title: str = "polypsi", thumb: int = 64, sprite_cols: int = SPRITE_COLS,
                  log_file: str | None = None, causal: dict[str, dict[int, dict]] | None = None) -> dict:
    """Write the browser into `out_dir`; returns counts of what was written.

    `sprites`: {layer: the folder `thumbs.build_sprites` wrote for the layer's patches} (rule `sprites`, with the
    same `thumb` and `sprite_cols`); each shown channel's sprite is linked into `out_dir` (a copy where links are
    not possible), after checking that it shows the patches of `patches`. `causal`: {layer: {channel: causal
    record}} for the channel pages (see channel_page). The pages are written in this thread: their HTML holds
    Python's lock (1,024 pages took 1.9 s in one thread, 2.1 s in two: docs/performance.md).
    """
    log = get_logger(log_file=log_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = dict(zip(dataset["label"].astype(int), dataset["class_name"].astype(str)))
    psi = _real_channels(psi)
    rows = index_rows(psi, clusters)
    cols = [{"key": k, "label": lab, "kind": kind} for k, lab, kind in INDEX_COLUMNS]
    data = {"title": title, "columns": cols, "fields": ROW_FIELDS, "sort": SORT_KEY, "dead_text": DEAD_TEXT,
            "rows": rows}
    _write_text(out / "data.js", "window.POLYPSI_DATA = " + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n")
    _write_text(out / "style.css", _asset("style.css"))
    _write_text(out / "browser.js", _asset("browser.js"))
    _write_text(out / "index.html", _page("index.html", title=html.escape(title)))

    hrefs = [r[len(INDEX_COLUMNS)] for r in rows]
    n_sprites = 0
    prog = Progress(len(rows), "browser pages", log)
    i = 0  # the page's place in the list, for its previous and next links
    for layer, df in psi.items():
        channel_rows = df.sort_values("channel").to_dict("records")
        pt_by = _records_by_channel(patches.get(layer), ["channel", "rank"])
        cl_by = {c: {int(r["cluster"]): r for r in recs}
                 for c, recs in _records_by_channel(clusters.get(layer), ["channel", "cluster"]).items()}
        # A dead channel's page shows no patches (its "top" patches are arbitrary images).
        shown = {int(r["channel"]): [] if is_dead(r) else pt_by.get(int(r["channel"]), []) for r in channel_rows}
        sprites_dir = Path(sprites[layer])
        try:
            index = pd.read_parquet(sprites_dir / SPRITE_INDEX, columns=SPRITE_KEYS)
        except (OSError, ValueError) as e:
            raise StageError(f"browser, layer {layer!r}: cannot read {sprites_dir / SPRITE_INDEX} ({e}); "
                             "rerun the sprites rule") from e
        _check_sprites(layer, {ch: g for ch, g in shown.items() if g}, index, sprites_dir)
        layer_causal = (causal or {}).get(layer, {})
        for r in channel_rows:
            ch = int(r["channel"])
            prev_href, next_href = hrefs[i - 1] if i > 0 else None, hrefs[i + 1] if i + 1 < len(hrefs) else None
            try:
                g = shown[ch]
                if g:  # a dead channel's page shows no patches, so it gets no sprite
                    place_sprite(sprite_file(sprites_dir, ch), out / "sprites" / slug(layer) / f"{ch}.jpg")
                    n_sprites += 1
                cols_used = sprite_layout(max(len(g), 1), sprite_cols)[1]
                page = channel_page(layer, r, g, cl_by.get(ch, {}), cols_used, thumb, prev_href, next_href,
                                    class_names, layer_causal.get(ch))
                _write_text(out / channel_href(layer, ch), page)
            except Exception as e:
                raise located(e, f"browser page, layer {layer!r}, channel {ch}") from e
            i += 1
            prog.update()
    log.info("browser: %d channel pages, %d sprites in %s", i, n_sprites, out)
    return {"channels": len(rows), "pages": i, "sprites": n_sprites}
