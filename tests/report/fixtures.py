"""A small generated run folder in the contract's formats, shared by the report and browser tests (a helper, not a test module).

Per layer: channels 0..n-1, the last one dead (its patches and clusters exist, as the calibrate stage
writes them, but name arbitrary images); channel SAME_NAME_CHANNEL's clusters 0 and 1 carry the same
concept name; two OR-unit rows (channels n, n+1, unit_kind "or_unit", no patches or clusters) with
the highest index and PSI of the layer, so an OR-unit that leaks into a gallery, the browser or a
statistic shows. The index is drawn independently of PSI, so ranking by one is not ranking by the other.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from polypsi.calibration import channels_only
from polypsi.crops import crop_boxes
from polypsi.io import read_json, read_table, write_json, write_table

INPUT = 32
LAYERS = {"layer3": dict(stride=4.0, offset=2.0, crop=16, channels=6, height=8, width=8),
          "layer4": dict(stride=8.0, offset=4.0, crop=24, channels=5, height=4, width=4)}
CLASSES = ["red", "green", "blue"]
K = 12
DIM = 8
SAME_NAME_CHANNEL = 1
N_OR_UNITS = 2


def _hats(rng, n, shift):
    return 1 / (1 + np.exp(-rng.normal(shift, 1.0, size=(n, 3))))


def _score_table(rng, channels, shift, dead=()):
    h = _hats(rng, len(channels), shift)
    df = pd.DataFrame({"channel": channels})
    for i, c in enumerate("SQD"):
        df[c] = rng.uniform(0, 0.3, len(df))
        df[f"{c}_mu"], df[f"{c}_sd"] = 0.1, 0.05
        df[f"{c}_hat"] = h[:, i]
    df["psi"] = df.S_hat * df.Q_hat * df.D_hat
    df["log_psi"] = np.log(df.psi)
    df["k_hat"] = rng.integers(2, 4, len(df))
    df["status"] = "ok"
    df["top_activation"] = rng.uniform(1, 5, len(df))
    df["index"] = rng.uniform(-0.5, 1.5, len(df))  # independent of PSI
    df.loc[0, "index"] = -0.3  # the index can be negative (null neurons sit near 0)
    df["unit_kind"] = "channel"
    for c in dead:
        m = df.channel == c
        df.loc[m, ["S", "Q", "D", "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "index"]] = np.nan
        df.loc[m, "status"] = "dead: top activation <= 0"
        df.loc[m, "top_activation"] = 0.0
    # OR-units: synthetic validation rows after the real channels, scoring above every real one.
    ors = df.iloc[:N_OR_UNITS].copy()
    ors["channel"] = len(channels) + np.arange(N_OR_UNITS)
    ors[["S_hat", "Q_hat", "D_hat"]] = 0.999
    ors["psi"], ors["log_psi"] = 0.999**3, 3 * np.log(0.999)
    ors["index"], ors["k_hat"], ors["status"], ors["top_activation"] = 9.0, 2, "ok", 3.0
    ors["unit_kind"] = "or_unit"
    return pd.concat([df, ors], ignore_index=True)


def make_run(root: Path, seed: int = 0) -> Path:
    """Write images, dataset, geometry, psi, null_psi, patches, clusters and prompts into root; return root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir = root / "images"
    rows = []
    for i in range(18):
        label = i % 3
        arr = (rng.uniform(0, 60, (INPUT, INPUT, 3))).astype(np.uint8)
        arr[..., label] += 180  # each class is one dominant colour
        arr[8:16, 8 + i % 12 : 16 + i % 12] = 255  # a white mark that moves with the image id
        p = img_dir / CLASSES[label] / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)
        rows.append((i, str(p), label, CLASSES[label]))
    ds = pd.DataFrame(rows, columns=["image_id", "path", "label", "class_name"])
    write_table(ds, root / "dataset.parquet")
    write_json({"input_size": INPUT, "layers": LAYERS}, root / "geometry.json")
    concepts = ["dog face", "car wheel", "stripes", "foliage", "column"]
    prompts = pd.DataFrame(
        [("main", c, j, t, t.format(c)) for j, c in enumerate(concepts) for t in ["a photo of {}", "{}"]]
        + [("null", c, j, "{}", c) for j, c in enumerate(["invoice", "tax law"])],
        columns=["set", "concept", "concept_id", "template", "prompt"],
    )
    pe = rng.normal(size=(len(prompts), DIM))
    write_table(prompts, root / "prompts" / "text.parquet", embeddings={"embedding": pe / np.linalg.norm(pe, axis=1, keepdims=True)})
    for li, (layer, g) in enumerate(LAYERS.items()):
        chans = np.arange(g["channels"])
        dead = (g["channels"] - 1,)
        write_table(_score_table(rng, chans, 0.8 + li, dead), root / "psi" / f"{layer}.parquet")
        write_table(_score_table(rng, chans, 0.0), root / "null_psi" / f"{layer}.parquet")
        prow, crow, embs = [], [], []
        for c in chans:
            n_cl = 2 + c % 2
            cl = np.arange(K) % n_cl
            centres = rng.normal(size=(n_cl, DIM))
            e = centres[cl] + 0.3 * rng.normal(size=(K, DIM))
            embs.append(e / np.linalg.norm(e, axis=1, keepdims=True))
            img = rng.choice(len(ds), K, replace=False)
            u, v = rng.integers(0, g["height"], K), rng.integers(0, g["width"], K)
            box = crop_boxes(u, v, g, INPUT)
            act = np.sort(rng.uniform(0.5, 4, K))[::-1].astype(np.float32)
            if c in dead:  # never fires: its "top" activations are <= 0
                act = -act[::-1]
            for r in range(K):
                prow.append((c, r, int(img[r]), int(u[r]), int(v[r]), act[r], int(cl[r]),
                             int(ds.label[img[r]]), *map(int, box[r])))
            for j in range(n_cl):
                name = concepts[(c + (0 if c == SAME_NAME_CHANNEL and j == 1 else j)) % 5]
                crow.append((c, j, int((cl == j).sum()), float(rng.uniform(0, 0.4)), name,
                             float(rng.uniform(0, 0.05)), concepts[(c + j + 1) % 5], float(rng.uniform(0.2, 0.3))))
        pdf = pd.DataFrame(prow, columns=["channel", "rank", "image_id", "u", "v", "activation", "cluster", "label",
                                          "y0", "x0", "y1", "x1"])
        write_table(pdf, root / "patches" / f"{layer}.parquet", embeddings={"embedding": np.concatenate(embs)})
        cdf = pd.DataFrame(crow, columns=["channel", "cluster", "size", "silhouette", "concept_1", "gap", "concept_2",
                                          "similarity_1"])
        write_table(cdf, root / "clusters" / f"{layer}.parquet")
    return root


def load_run(root: Path, raw: bool = False):
    """(psi, null, clusters, patches, dataset, geometry) dicts keyed by layer, as the report reads them:
    real channels only (OR-unit rows dropped), unless `raw`."""
    root = Path(root)
    keep = (lambda df: df) if raw else channels_only
    psi = {l: keep(read_table(root / "psi" / f"{l}.parquet")) for l in LAYERS}
    null = {l: keep(read_table(root / "null_psi" / f"{l}.parquet")) for l in LAYERS}
    clusters = {l: read_table(root / "clusters" / f"{l}.parquet") for l in LAYERS}
    patches = {l: read_table(root / "patches" / f"{l}.parquet") for l in LAYERS}
    return psi, null, clusters, patches, read_table(root / "dataset.parquet"), read_json(root / "geometry.json")

