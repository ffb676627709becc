"""Static neuron browser: an index of every channel and one page per channel, opened from disk.

Layout of the output folder:
  index.html, style.css, browser.js     the sortable, filterable channel table
  data.js                               the table rows (a script, because file:// pages cannot fetch JSON)
  channels/<layer>/<channel>.html       one page per channel: summary, activation plot, clusters, patches
  sprites/<layer>/<channel>.jpg         the channel's patch thumbnails tiled into one JPEG
Each thumbnail is an <img> of the sprite shifted with object-position, so a page loads one small file.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path
from ..runtime import Progress, get_logger
from .thumbs import sprite_layout, thumbnails, write_sprite

# Columns of the index table: (key, header, kind). Kinds drive formatting and sorting in browser.js.
INDEX_COLUMNS = [
    ("layer", "layer", "text"),
    ("channel", "channel", "int"),
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


def index_rows(psi: dict[str, pd.DataFrame], clusters: dict[str, pd.DataFrame]) -> list[list]:
    """One row per channel of every layer, in INDEX_COLUMNS order plus the page link."""
    rows = []
    for layer, df in psi.items():
        names = {}
        cl = clusters.get(layer)
        if cl is not None and len(cl):
            # Biggest cluster first in the name list.
            for r in cl.sort_values(["channel", "size", "cluster"], ascending=[True, False, True]).to_dict("records"):
                names.setdefault(int(r["channel"]), []).append(_cluster_label(r))
        for r in df.sort_values("channel").to_dict("records"):
            ch = int(r["channel"])
            k = _num(r.get("k_hat"))
            rows.append(
                [
                    str(layer), ch, _num(r.get("psi")), _num(r.get("log_psi")), _num(r.get("S_hat")),
                    _num(r.get("Q_hat")), _num(r.get("D_hat")), None if k is None else int(k),
                    " · ".join(names.get(ch, [])), str(r.get("status", "ok")), _num(r.get("top_activation")),
                    channel_href(layer, ch),
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
                 thumb: int, prev_href: str | None, next_href: str | None, class_names: dict) -> str:
    """The HTML of one channel page. `patches` are records in sprite order (thumbnail i = patches[i]);
    `clusters` maps cluster id to its clusters/<layer>.parquet record."""
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
        ("PSI", _fmt(row.get("psi"), 4)), ("log PSI", _fmt(row.get("log_psi"))),
        ("S (raw) / Ŝ", f'{_fmt(row.get("S"))} / {_fmt(row.get("S_hat"))}'),
        ("Q (raw) / Q̂", f'{_fmt(row.get("Q"))} / {_fmt(row.get("Q_hat"))}'),
        ("D (raw) / D̂", f'{_fmt(row.get("D"), 4)} / {_fmt(row.get("D_hat"))}'),
        ("K̂", "—" if _num(row.get("k_hat")) is None else str(int(row["k_hat"]))),
        ("top activation", _fmt(row.get("top_activation"), 4)), ("status", e(str(row.get("status", "ok")))),
    ]
    summary_html = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary)

    groups: dict[int, list[tuple[int, dict]]] = {}
    for pos, p in enumerate(patches):
        groups.setdefault(int(p["cluster"]), []).append((pos, p))
    sections = []
    for cl in sorted(groups):
        members = groups[cl]
        ci = clusters.get(cl)
        if ci is not None:
            title = e(str(ci.get("concept_1") or "")) or f"cluster {cl}"
            detail = (f'size {int(ci["size"])} · silhouette {_fmt(ci.get("silhouette"))} · '
                      f'gap {_fmt(ci.get("gap"), 4)} · best match {_fmt(ci.get("similarity_1"))} · '
                      f'runner-up “{e(str(ci.get("concept_2") or ""))}”')
        else:
            title, detail = f"cluster {cl}", f"size {len(members)}"
        figs = []
        for pos, p in members:
            rr, cc = divmod(pos, sprite_cols)
            label = p.get("label")
            cname = "" if label is None else e(str(class_names.get(int(label), label)))
            figs.append(
                f'<figure><img class="thumb" src="{sprite}" width="{thumb}" height="{thumb}" alt="rank {int(p["rank"])}" '
                f'style="object-position:-{cc * thumb}px -{rr * thumb}px" loading="lazy">'
                f'<figcaption>#{int(p["rank"])} · {float(p["activation"]):.3g}<br>{cname}</figcaption></figure>'
            )
        sections.append(
            f'<section class="cluster" data-cluster="{cl}"><h3><span class="swatch c{cl % 8}"></span>'
            f'Cluster {cl}: {title}</h3><p class="detail">{detail}</p><div class="patches">{"".join(figs)}</div></section>'
        )
    if not patches:
        sections.append("<p>No mined patches for this channel.</p>")
    chart = activation_svg([p["rank"] for p in patches], [p["activation"] for p in patches],
                           [p["cluster"] for p in patches]) if patches else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(layer)} channel {ch} · polypsi</title>
<link rel="stylesheet" href="{up}style.css"></head>
<body class="channel-page"><nav>{" · ".join(nav)}</nav>
<h1>{e(layer)} · channel {ch}</h1>
<div class="top"><table class="summary">{summary_html}</table>
<div><h2>Activations of the mined patches</h2>{chart}</div></div>
<h2>Clusters</h2>
{"".join(sections)}
</body></html>
"""


def _records_by_channel(df: pd.DataFrame | None, sort: list[str]) -> dict[int, list[dict]]:
    """Plain-dict records grouped by channel (building pages from dicts is far cheaper than from frames)."""
    if df is None or df.empty:
        return {}
    out: dict[int, list[dict]] = {}
    for r in df.sort_values(sort).to_dict("records"):
        out.setdefault(int(r["channel"]), []).append(r)
    return out


def build_browser(out_dir: str | Path, psi: dict[str, pd.DataFrame], clusters: dict[str, pd.DataFrame],
                  patches: dict[str, pd.DataFrame], dataset: pd.DataFrame, input_size: int, title: str = "polypsi",
                  thumb: int = 64, sprite_cols: int = 10, chunk: int = 128, log_file: str | None = None) -> dict:
    """Write the browser into `out_dir`; returns counts of what was written."""
    log = get_logger(log_file=log_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = dict(zip(dataset["label"].astype(int), dataset["class_name"].astype(str)))
    rows = index_rows(psi, clusters)
    cols = [{"key": k, "label": lab, "kind": kind} for k, lab, kind in INDEX_COLUMNS]
    data = {"title": title, "columns": cols, "rows": rows}
    _write_text(out / "data.js", "window.POLYPSI_DATA = " + json.dumps(data, separators=(",", ":"), allow_nan=False) + ";\n")
    _write_text(out / "style.css", STYLE)
    _write_text(out / "browser.js", SCRIPT)
    _write_text(out / "index.html", INDEX_HTML.replace("{title}", html.escape(title)))

    hrefs = [r[-1] for r in rows]
    n_pages = n_sprites = 0
    prog = Progress(len(rows), "browser pages", log)
    i_global = 0
    for layer, df in psi.items():
        channel_rows = df.sort_values("channel").to_dict("records")
        pt = patches.get(layer)
        pt_by = _records_by_channel(pt, ["channel", "rank"])
        cl_by = {c: {int(r["cluster"]): r for r in recs}
                 for c, recs in _records_by_channel(clusters.get(layer), ["channel", "cluster"]).items()}
        for start in range(0, len(channel_rows), chunk):
            block = channel_rows[start : start + chunk]
            # Thumbnails of the whole block at once: each image is read once per block.
            recs = [p for r in block for p in pt_by.get(int(r["channel"]), [])]
            thumbs = thumbnails(pd.DataFrame.from_records(recs), dataset, input_size, thumb) if recs else None
            offset = 0
            for r in block:
                ch = int(r["channel"])
                g = pt_by.get(ch, [])
                if g:
                    write_sprite(thumbs[offset : offset + len(g)], out / "sprites" / slug(layer) / f"{ch}.jpg", sprite_cols)
                    offset += len(g)
                    n_sprites += 1
                cols_used = sprite_layout(max(len(g), 1), sprite_cols)[1]
                page = channel_page(
                    layer, r, g, cl_by.get(ch, {}), cols_used, thumb,
                    hrefs[i_global - 1] if i_global > 0 else None,
                    hrefs[i_global + 1] if i_global + 1 < len(hrefs) else None, class_names,
                )
                _write_text(out / channel_href(layer, ch), page)
                n_pages += 1
                i_global += 1
            prog.update(len(block))
    log.info("browser: %d channel pages, %d sprites in %s", n_pages, n_sprites, out)
    return {"channels": len(rows), "pages": n_pages, "sprites": n_sprites}


INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · neuron browser</title>
<link rel="stylesheet" href="style.css"></head>
<body>
<h1>{title} · neuron browser</h1>
<p class="help">Click a column header to sort (again to reverse). Type to filter on any text; a channel link opens its
clusters and patches.</p>
<div class="controls">
  <input id="filter" type="search" placeholder="filter: concept, status, channel…" size="32">
  <select id="layer"><option value="">all layers</option></select>
  <label><input id="okonly" type="checkbox"> status ok only</label>
  <span id="count"></span>
</div>
<table id="channels"><thead><tr></tr></thead><tbody></tbody></table>
<noscript>The table needs JavaScript; channel pages are plain HTML under channels/.</noscript>
<script src="data.js"></script>
<script src="browser.js"></script>
</body></html>
"""

SCRIPT = r"""// Sortable, filterable channel table; data comes from data.js (window.POLYPSI_DATA).
(function () {
  "use strict";
  var D = window.POLYPSI_DATA;
  var cols = D.columns, rows = D.rows, HREF = cols.length;
  var key = {}; cols.forEach(function (c, i) { key[c.key] = i; });
  var state = { sort: null, dir: -1 };
  var tbody = document.querySelector("#channels tbody");
  var headRow = document.querySelector("#channels thead tr");
  var filter = document.getElementById("filter"), layerSel = document.getElementById("layer");
  var okOnly = document.getElementById("okonly"), count = document.getElementById("count");

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  }
  function fmt(v, kind) {
    if (v === null || v === undefined) return "—";
    if (kind === "num") return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
    return esc(v);
  }
  cols.forEach(function (c, i) {
    var th = document.createElement("th");
    th.textContent = c.label; th.dataset.key = c.key; th.dataset.kind = c.kind; th.title = "sort by " + c.label;
    th.addEventListener("click", function () { sortBy(i); });
    headRow.appendChild(th);
  });
  Array.from(new Set(rows.map(function (r) { return r[0]; }))).forEach(function (l) {
    var o = document.createElement("option"); o.value = l; o.textContent = l; layerSel.appendChild(o);
  });

  function sortBy(i) {
    // Numbers sort high-to-low first (the interesting channels on top); text A-to-Z first.
    if (state.sort === i) state.dir = -state.dir;
    else { state.sort = i; state.dir = cols[i].kind === "text" ? 1 : -1; }
    render();
  }
  function compare(a, b) {
    var i = state.sort, x = a[i], y = b[i];
    if (x === null && y === null) return 0;
    if (x === null) return 1;   // missing values always last
    if (y === null) return -1;
    if (cols[i].kind === "text") return state.dir * String(x).localeCompare(String(y));
    return state.dir * (x - y);
  }
  function render() {
    var q = filter.value.trim().toLowerCase(), l = layerSel.value, ok = okOnly.checked;
    var shown = rows.filter(function (r) {
      if (l && r[0] !== l) return false;
      if (ok && r[key.status] !== "ok") return false;
      if (!q) return true;
      return (r[0] + " " + r[1] + " " + r[key.clusters] + " " + r[key.status]).toLowerCase().indexOf(q) >= 0;
    });
    if (state.sort !== null) shown.sort(compare);
    var html = shown.map(function (r) {
      return "<tr>" + cols.map(function (c, i) {
        var v = fmt(r[i], c.kind);
        if (c.key === "channel") v = '<a href="' + r[HREF] + '">' + v + "</a>";
        return '<td data-key="' + c.key + '" data-value="' + (r[i] === null ? "" : esc(r[i])) + '">' + v + "</td>";
      }).join("") + "</tr>";
    }).join("");
    tbody.innerHTML = html;
    count.textContent = shown.length + " of " + rows.length + " channels";
    headRow.querySelectorAll("th").forEach(function (th, i) {
      th.className = state.sort === i ? (state.dir < 0 ? "desc" : "asc") : "";
    });
  }
  [filter, layerSel, okOnly].forEach(function (el) { el.addEventListener("input", render); el.addEventListener("change", render); });
  render();
  document.body.dataset.ready = "1";
})();
"""

STYLE = """body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.2em; } h3 { font-size: 1em; margin: 0.6em 0 0.2em; }
.help, .detail { color: #555; margin: 0.2em 0 0.6em; }
.controls { margin: 0.6em 0; display: flex; gap: 1em; align-items: center; }
table#channels { border-collapse: collapse; width: 100%; }
#channels th, #channels td { padding: 2px 8px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
#channels td[data-key=layer], #channels td[data-key=clusters], #channels td[data-key=status] { text-align: left; }
#channels td[data-key=clusters] { white-space: normal; max-width: 32em; }
#channels th[data-kind=text] { text-align: left; }
#channels th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; user-select: none; }
#channels th.desc::after { content: " ▼"; } #channels th.asc::after { content: " ▲"; }
#channels tbody tr:hover { background: #f6f9ff; }
.top { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
table.summary th { text-align: left; padding-right: 1em; font-weight: 600; }
.patches { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 72px; font-size: 10px; text-align: center; color: #444; }
img.thumb { object-fit: none; display: block; margin: 0 auto; border: 1px solid #ccc; }
svg.acts .axis { stroke: #888; } svg.acts .tick { font-size: 10px; fill: #555; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; border-radius: 2px; }
.c0 { fill: #0173b2; background: #0173b2; } .c1 { fill: #de8f05; background: #de8f05; }
.c2 { fill: #029e73; background: #029e73; } .c3 { fill: #d55e00; background: #d55e00; }
.c4 { fill: #cc78bc; background: #cc78bc; } .c5 { fill: #ca9161; background: #ca9161; }
.c6 { fill: #fbafe4; background: #fbafe4; } .c7 { fill: #949494; background: #949494; }
"""
