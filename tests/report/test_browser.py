"""The neuron browser in a real headless Chromium: the table loads ranked by the index, sorts by PSI,
filters; a channel page shows its patches; a channel whose clusters share a name is marked, a dead
channel shows no clusters or names; OR-units never appear. Needs Debian's chromium + chromium-driver
and selenium (see docs/report.md); skipped with the install lines when they are missing. Then, without a
browser: the table rows, sprites and pages, and building in threads (the same files as in one thread,
each image decoded once per layer, failures naming their layer and channel)."""

import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from .fixtures import K, LAYERS, SAME_NAME_CHANNEL, load_run, make_run

from polypsi import crops
from polypsi.errors import DatasetError
from polypsi.errors import StageError
from polypsi.report import browser, thumbs
from polypsi.report.browser import INDEX_COLUMNS, build_browser, channel_href, index_rows, slug
from polypsi.report.thumbs import build_sprites, thumbnails, write_sprite

pytestmark = pytest.mark.browser

INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
CHROMIUM = os.environ.get("POLYPSI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("POLYPSI_CHROMEDRIVER") or shutil.which("chromedriver")


def make_browser(out, psi, clusters, patches, ds, size, workers=1, block=128, **kw):
    """What rules sprites (one per layer, into <out>-sprites/<layer>) and browser write."""
    sprites = {}
    for layer, p in patches.items():
        sprites[layer] = Path(f"{out}-sprites") / layer
        build_sprites(sprites[layer], p, ds, size, layer=layer, workers=workers, block=block)
    return build_browser(out, psi, clusters, patches, ds, sprites, **kw)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed; run: {INSTALL}")
    if not CHROMIUM or not DRIVER:
        pytest.skip(f"headless browser test needs chromium and chromedriver on PATH; run: {INSTALL}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The browser of a generated run, built from the raw psi tables (OR-unit rows included);
    returns the folder and the real channels' tables the pages must show."""
    root = make_run(tmp_path_factory.mktemp("run"))
    raw, _, clusters, patches, ds, geom = load_run(root, raw=True)
    make_browser(root / "browser", raw, clusters, patches, ds, geom["input_size"], title="synthetic run")
    psi = load_run(root)[0]
    return root / "browser", psi, clusters


def _open_index(drv, out):
    from selenium.webdriver.common.by import By

    drv.get((out / "index.html").as_uri())
    _wait(drv, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def _row(drv, layer, channel):
    """The table row of (layer, channel), or None."""
    from selenium.webdriver.common.by import By

    for tr in drv.find_elements(By.CSS_SELECTOR, "#channels tbody tr"):
        tds = {td.get_attribute("data-key"): td for td in tr.find_elements(By.TAG_NAME, "td")}
        if tds["layer"].text == layer and int(tds["channel"].text) == channel:
            return tr
    return None


def _wait(drv, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(cond)


def _column(drv, key):
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#channels tbody td[data-key=\"' + arguments[0] + '\"]'))"
        ".map(td => td.dataset.value);", key)


def test_table_loads_sorts_and_filters(driver, site):
    from selenium.webdriver.common.by import By

    out, psi, _ = site
    n = sum(len(df) for df in psi.values())  # real channels only: no OR-unit row
    _open_index(driver, out)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == n
    assert f"{n} of {n}" in driver.find_element(By.ID, "count").text
    shown = {(l, int(c)) for l, c in zip(_column(driver, "layer"), _column(driver, "channel"))}
    assert shown == {(l, int(c)) for l, df in psi.items() for c in df.channel}

    # Opens ranked by the index, highest first, PSI in the next column.
    heads = [th.get_attribute("data-key") for th in driver.find_elements(By.CSS_SELECTOR, "#channels th")]
    assert heads[2:4] == ["index", "psi"]
    assert "desc" in driver.find_element(By.CSS_SELECTOR, "#channels th[data-key=index]").get_attribute("class")
    vals = _column(driver, "index")
    by_index = np.sort(np.concatenate([df["index"].dropna().to_numpy() for df in psi.values()]))[::-1]
    np.testing.assert_allclose([float(v) for v in vals if v != ""], by_index, rtol=1e-6)
    assert vals[len(by_index):] == [""] * (n - len(by_index))  # dead channels (no index) last

    driver.find_element(By.CSS_SELECTOR, "#channels th[data-key=psi]").click()
    vals = _column(driver, "psi")
    nums = [float(v) for v in vals if v != ""]
    expect = np.sort(np.concatenate([df.psi.dropna().to_numpy() for df in psi.values()]))[::-1]
    np.testing.assert_allclose(nums, expect, rtol=1e-6)
    assert vals[len(nums):] == [""] * (n - len(nums))  # dead channels (no PSI) sort last
    assert "desc" in driver.find_element(By.CSS_SELECTOR, "#channels th[data-key=psi]").get_attribute("class")

    driver.find_element(By.CSS_SELECTOR, "#channels th[data-key=psi]").click()
    asc = [float(v) for v in _column(driver, "psi") if v != ""]
    np.testing.assert_allclose(asc, expect[::-1], rtol=1e-6)

    box = driver.find_element(By.ID, "filter")
    box.send_keys("dead")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == len(LAYERS))
    box.clear()
    box.send_keys("x")  # an input event after clear restores and refilters
    box.clear()
    driver.find_element(By.ID, "okonly").click()
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == n - len(LAYERS))


def test_channel_page_shows_its_patches(driver, site):
    from selenium.webdriver.common.by import By

    out, psi, clusters = site
    _open_index(driver, out)
    first = driver.find_element(By.CSS_SELECTOR, "#channels tbody tr")  # the highest index: no click needed
    layer = first.find_element(By.CSS_SELECTOR, "td[data-key=layer]").text
    channel = int(first.find_element(By.CSS_SELECTOR, "td[data-key=channel]").text)
    best = max(((l, df.loc[df["index"].idxmax()]) for l, df in psi.items()), key=lambda t: t[1]["index"])
    assert (layer, channel) == (best[0], int(best[1].channel))
    assert float(first.find_element(By.CSS_SELECTOR, "td[data-key=psi]").get_attribute("data-value")) == \
        pytest.approx(best[1].psi)

    first.find_element(By.CSS_SELECTOR, "td[data-key=channel] a").click()
    _wait(driver, lambda d: "channel-page" in d.find_element(By.TAG_NAME, "body").get_attribute("class"))
    assert driver.find_element(By.TAG_NAME, "h1").text == f"{layer} · channel {channel}"
    sections = driver.find_elements(By.CSS_SELECTOR, "section.cluster")
    cl = clusters[layer][clusters[layer].channel == channel]
    assert len(sections) == len(cl)
    for sec, (_, row) in zip(sections, cl.sort_values("cluster").iterrows()):
        assert row.concept_1 in sec.find_element(By.TAG_NAME, "h3").text
        assert f"size {int(row['size'])}" in sec.text
        assert len(sec.find_elements(By.CSS_SELECTOR, "img.thumb")) == int(row["size"])
    # Every thumbnail is decoded from the sprite on disk (not a broken image).
    _wait(driver, lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"))
    imgs = driver.find_elements(By.CSS_SELECTOR, "img.thumb")
    assert len(imgs) == K
    assert all(Path(i.get_attribute("src").removeprefix("file://")).is_file() for i in imgs)
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.acts circle")) == K
    # Thumbnail of rank r is tile r of the sprite (10 columns of 64 px).
    for img in imgs:
        r = int(img.get_attribute("alt").removeprefix("rank "))
        want = f"{-(r % 10) * 64}px {-(r // 10) * 64}px".replace("-0px", "0px")
        assert img.value_of_css_property("object-position") == want


def test_dead_channel_shows_no_clusters_or_names(driver, site):
    """A dead channel's mined patches are arbitrary images: the list and its page show "dead: never fires",
    never its clusters' names (which the clusters table does hold)."""
    from selenium.webdriver.common.by import By

    out, psi, clusters = site
    _open_index(driver, out)
    for layer, df in psi.items():
        dead = int(df[df.status.str.startswith("dead")].channel.iloc[0])
        names = set(clusters[layer][clusters[layer].channel == dead].concept_1)
        assert names  # the calibrate stage names a dead channel's clusters too
        tr = _row(driver, layer, dead)
        cell = tr.find_element(By.CSS_SELECTOR, "td[data-key=clusters]")
        assert cell.text == "dead: never fires" and cell.get_attribute("data-value") == ""
        assert cell.find_element(By.CSS_SELECTOR, ".badge.dead").is_displayed()
        assert not tr.find_elements(By.CSS_SELECTOR, ".badge.same-name")
        assert "dead" in tr.get_attribute("class")

        driver.get((out / "channels" / layer / f"{dead}.html").as_uri())
        assert "dead" in driver.find_element(By.CSS_SELECTOR, "table.summary").text
        assert driver.find_element(By.CSS_SELECTOR, ".badges .badge.dead").text == "dead: never fires"
        body = driver.find_element(By.TAG_NAME, "body").text
        assert not driver.find_elements(By.CSS_SELECTOR, "section.cluster, img.thumb, svg.acts")
        assert "Clusters" not in body and not any(n in body for n in names)
        assert not (out / "sprites" / layer / f"{dead}.jpg").exists()
        _open_index(driver, out)
    box = driver.find_element(By.ID, "filter")
    box.send_keys("never fires")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == len(LAYERS))


def test_channel_with_repeated_cluster_names_is_marked(driver, site):
    """Several clusters under one concept name: the list and the page mark the channel and those clusters."""
    from selenium.webdriver.common.by import By

    out, psi, clusters = site
    marked = {}
    for layer, c in clusters.items():
        live = set(psi[layer].channel[~psi[layer].status.str.startswith("dead")])
        for ch, g in c[c.channel.isin(live)].groupby("channel"):
            dup = sorted(set(g.concept_1[g.concept_1.duplicated()]))
            if dup:
                marked[(layer, int(ch))] = dup
    assert set(marked) == {(l, SAME_NAME_CHANNEL) for l in LAYERS}
    _open_index(driver, out)
    for tr in driver.find_elements(By.CSS_SELECTOR, "#channels tbody tr"):
        layer = tr.find_element(By.CSS_SELECTOR, "td[data-key=layer]").text
        ch = int(tr.find_element(By.CSS_SELECTOR, "td[data-key=channel]").text)
        badges = tr.find_elements(By.CSS_SELECTOR, "td[data-key=clusters] .badge.same-name")
        if (layer, ch) in marked:
            assert [b.text for b in badges] == ["same name: " + ", ".join(marked[(layer, ch)])]
            assert badges[0].is_displayed() and tr.get_attribute("data-same-name") == ", ".join(marked[(layer, ch)])
        else:
            assert not badges and tr.get_attribute("data-same-name") is None
    driver.find_element(By.ID, "sameonly").click()
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == len(marked))

    for (layer, ch), dup in marked.items():
        driver.get((out / "channels" / layer / f"{ch}.html").as_uri())
        badge = driver.find_element(By.CSS_SELECTOR, ".badges .badge.same-name")
        assert badge.is_displayed() and badge.text == "same name: " + ", ".join(dup)
        c = clusters[layer][clusters[layer].channel == ch].sort_values("cluster")
        sections = driver.find_elements(By.CSS_SELECTOR, "section.cluster")
        assert len(sections) == len(c)
        for sec, name in zip(sections, c.concept_1):
            flagged = sec.find_elements(By.CSS_SELECTOR, "h3 .badge.same-name")
            assert bool(flagged) == (name in dup), (name, dup)
    # An unmarked live channel's page has no badge.
    layer, df = next(iter(psi.items()))
    other = int(df[(df.status == "ok") & (df.channel != SAME_NAME_CHANNEL)].channel.iloc[0])
    driver.get((out / "channels" / layer / f"{other}.html").as_uri())
    assert not driver.find_elements(By.CSS_SELECTOR, ".badge")


def test_browser_data_flags_and_real_channels_only(tmp_path):
    """The rows of data.js: index beside PSI, the same-name flag, no names for dead channels, no OR-units."""
    root = make_run(tmp_path)
    raw, _, clusters, *_ = load_run(root, raw=True)
    rows = index_rows(raw, clusters)
    keys = [k for k, _, _ in INDEX_COLUMNS]
    assert keys[2:4] == ["index", "psi"]
    real = load_run(root)[0]
    assert [(r[0], r[1]) for r in rows] == [(l, int(c)) for l, df in real.items() for c in sorted(df.channel)]
    for r in rows:
        rec = dict(zip(keys + ["href", "same_name"], r))
        p = real[rec["layer"]].set_index("channel").loc[rec["channel"]]
        assert rec["psi"] == (None if np.isnan(p.psi) else pytest.approx(p.psi))
        assert rec["index"] == (None if np.isnan(p["index"]) else pytest.approx(p["index"]))
        if p.status.startswith("dead"):
            assert rec["clusters"] == "" and rec["same_name"] is None
        elif rec["channel"] == SAME_NAME_CHANNEL:
            assert rec["same_name"] == ["car wheel"] if rec["layer"] == "layer3" else rec["same_name"]
        else:
            assert rec["same_name"] is None and rec["clusters"]
    with pytest.raises(ValueError, match="lacks column 'index'"):
        index_rows({"layer3": raw["layer3"].drop(columns="index")}, clusters)


def test_sprite_tiles_and_thumbnails_match_the_crops(tmp_path):
    from PIL import Image

    from polypsi.crops import load_image
    from polypsi.io import read_table

    root = make_run(tmp_path)
    ds = read_table(root / "dataset.parquet")
    p = read_table(root / "patches" / "layer3.parquet").iloc[:5]
    # Crop side 16 rendered at 16 px: the thumbnail is the crop itself, pixel for pixel.
    th = thumbnails(p, ds, 32, size=16, batch=2)  # batches of 2 exercise the batch boundaries
    for t, r in zip(th, p.itertuples()):
        img = load_image(ds.path[r.image_id], 32)[:, r.y0 : r.y1, r.x0 : r.x1]
        ref = img.mul(255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(t.astype(int) - ref.astype(int)).max() <= 1
    # Sprite: tile i sits at row i // cols, column i % cols (what the channel pages' object-position assumes).
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [0, 0, 0]])
    tiles = np.repeat(np.repeat(colours[:, None, None, :], 16, 1), 16, 2).astype(np.uint8)
    assert write_sprite(tiles, tmp_path / "s.jpg", cols=3) == (3, 3)
    sprite = np.asarray(Image.open(tmp_path / "s.jpg").convert("RGB")).astype(int)
    assert sprite.shape == (48, 48, 3)
    for i, c in enumerate(colours):
        r, col = divmod(i, 3)
        centre = sprite[r * 16 + 4 : r * 16 + 12, col * 16 + 4 : col * 16 + 12].reshape(-1, 3).mean(0)
        assert np.abs(centre - c).max() < 30, (i, centre, c)


def test_channel_page_shows_the_neuron_view_beside_the_clip_clusters():
    """With neuron embeddings, a page also groups the same patches by their neuron-view clusters."""
    import re

    from polypsi.report.browser import channel_page

    row = {"channel": 3, "index": 0.2, "psi": 0.5, "status": "ok", "k_hat": 2,
           "ne_S": 0.61, "ne_k_hat": 3, "ne_Q": 0.4, "ne_ari": 0.25, "foote_k": 4}
    patches = [{"rank": r, "activation": 1.0 - r / 10, "cluster": r % 2, "ne_cluster": r % 3, "label": 0}
               for r in range(6)]
    clusters = {c: {"concept_1": f"concept {c}", "size": 3, "silhouette": 0.5, "gap": 0.1, "similarity_1": 0.3,
                    "concept_2": "x"} for c in (0, 1)}
    page = channel_page("layer3", row, patches, clusters, 10, 64, None, None, {0: "cat"})
    assert "neuron view: S / K̂</th><td>0.610 / 3" in page and "Foote clusters</th><td>4" in page
    view = page[page.index('<details class="neuron-view">'):]
    assert re.findall(r'data-ne-cluster="(\d)"', view) == ["0", "1", "2"]
    assert view.count("<figure>") == 6 and page.count("<figure>") == 12  # every patch in both groupings
    without = channel_page("layer3", {k: v for k, v in row.items() if not k.startswith(("ne_", "foote"))},
                           [{k: v for k, v in p.items() if k != "ne_cluster"} for p in patches], clusters, 10, 64,
                           None, None, {0: "cat"})
    assert "neuron-view" not in without and "neuron view" not in without


def test_channel_page_shows_causal_polysemanticity():
    """A channel the insertion protocol tested shows its driving clusters and each cluster's test."""
    import pandas as pd

    from polypsi.report.browser import causal_records, channel_page

    row = {"channel": 3, "index": 0.2, "psi": 0.5, "status": "ok", "k_hat": 2}
    patches = [{"rank": r, "activation": 1.0 - r / 10, "cluster": r % 2, "label": 0} for r in range(4)]
    clusters = {c: {"concept_1": f"concept {c}", "size": 2, "silhouette": 0.5, "gap": 0.1, "similarity_1": 0.3,
                    "concept_2": "x"} for c in (0, 1)}
    channels = pd.DataFrame(dict(channel=[3], n_clusters=[2], n_driving=[1], n_causes=[1]))
    trials = pd.DataFrame(dict(protocol="insert", condition=["Cluster", "Cluster", "Random"], channel=3,
                               cluster=[0, 1, -1], cluster_diff_mean=[0.45, 0.02, None],
                               cluster_diff_ci_low=[0.3, -0.05, None], cluster_diff_ci_high=[0.6, 0.09, None],
                               cluster_pvalue_holm=[0.001, 0.4, None], cluster_cohens_dz=[2.0, 0.1, None],
                               cluster_drives=[True, False, None], cluster_cause=[0, -1, None]))
    causal = causal_records(channels, trials)
    page = channel_page("layer4", row, patches, clusters, 10, 64, None, None, {0: "cat"}, causal[3])
    assert "1 of 2 clusters drive it on their own, 1 distinct cause(s)" in page
    assert page.count("drives it (cause 0)") == 1 and page.count("does not drive it") == 1
    assert "0.450 of top-1 above Random [0.300, 0.600]" in page
    plain = channel_page("layer4", row, patches, clusters, 10, 64, None, None, {0: "cat"})
    assert "causal polysemanticity" not in plain and "Random" not in plain


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A generated run's browser inputs: psi (OR-unit rows included: the builder drops them), clusters, patches,
    dataset, input size."""
    root = make_run(tmp_path_factory.mktemp("run"))
    psi, _, clusters, patches, ds, geom = load_run(root, raw=True)
    return psi, clusters, patches, ds, geom["input_size"]


def _build(out, inputs, workers, monkeypatch, part=16):
    # Parts of about 16 crops and sprite blocks of 2 channels: several of each per layer, as at scale.
    monkeypatch.setattr(thumbs, "CUT_PART", part)
    psi, clusters, patches, ds, size = inputs
    return make_browser(out, psi, clusters, patches, ds, size, workers, block=2, title="t")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_threads_write_the_same_files_as_one(world, tmp_path, monkeypatch):
    one = _build(tmp_path / "one", world, 1, monkeypatch)
    two = _build(tmp_path / "two", world, 2, monkeypatch)
    assert one == two and one["pages"] == sum(len(df[df.unit_kind == "channel"]) for df in world[0].values())
    serial, parallel = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert serial == parallel  # byte for byte, every page, sprite and script
    assert _files(tmp_path / "one-sprites") == _files(tmp_path / "two-sprites")
    assert not [f for f in _files(tmp_path / "one-sprites") if ".thumbs-" in f]  # the tile files are gone
    # A sprite is what the per-channel way writes: the channel's thumbnails in rank order, tiled.
    psi, clusters, patches, ds, size = world
    for layer in LAYERS:
        p = patches[layer][patches[layer].channel == 0].sort_values("rank")
        write_sprite(thumbnails(p, ds, size), tmp_path / "ref.jpg")
        assert (tmp_path / "ref.jpg").read_bytes() == serial[f"sprites/{slug(layer)}/0.jpg"]
        assert channel_href(layer, 0) in serial
        # linked, not copied, where the file system allows it
        assert (tmp_path / "one" / "sprites" / slug(layer) / "0.jpg").stat().st_nlink == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_each_image_is_decoded_once_per_layer(world, tmp_path, monkeypatch, workers):
    """Counted with a one-image cache per thread (the real cache holds 256 images, which would hide a
    second decoding on a small run): an image decoded twice in a layer had its crops in two runs."""
    decoded, last = Counter(), threading.local()
    load = crops.load_image
    monkeypatch.setattr(thumbs, "CUT_PART", 8)
    psi, clusters, patches, ds, size = world
    for layer in LAYERS:
        def cached(path, size):
            if getattr(last, "key", None) != (layer, path, size):
                last.key, last.image = (layer, path, size), load(path, size)
                decoded[layer, path] += 1
            return last.image

        monkeypatch.setattr(crops, "_cached_image", cached)
        build_sprites(tmp_path / layer, patches[layer], ds, size, layer=layer, workers=workers)
    # every channel's sprite, a dead one's too (which channels are dead is known after the scoring only)
    expect = {(layer, ds.path[j]) for layer in LAYERS for j in patches[layer].image_id.unique()}
    assert set(decoded) == expect and set(decoded.values()) == {1}
    for layer in LAYERS:
        assert {f.name for f in (tmp_path / layer).iterdir()} == \
            {"index.parquet", *(f"{c}.jpg" for c in patches[layer].channel.unique())}


def test_sprites_of_other_patches_are_refused(world, tmp_path):
    """The browser links a layer's sprites only when they show its patches table's rows, in order."""
    psi, clusters, patches, ds, size = world
    moved = {l: p.copy() for l, p in patches.items()}
    row = moved["layer4"].index[(moved["layer4"].channel == 3) & (moved["layer4"]["rank"] == 1)][0]
    moved["layer4"].loc[row, ["y0", "y1"]] += 1  # another crop box for one patch of channel 3
    for layer in LAYERS:
        build_sprites(tmp_path / "sprites" / layer, moved[layer], ds, size, layer=layer)
    sprites = {l: tmp_path / "sprites" / l for l in LAYERS}
    with pytest.raises(StageError, match=r"browser, layer 'layer4', channel 3: the sprites in .* show other patches"):
        build_browser(tmp_path / "out", psi, clusters, patches, ds, sprites)
    build_sprites(sprites["layer4"], patches["layer4"][patches["layer4"].channel != 2], ds, size, layer="layer4")
    with pytest.raises(StageError, match=r"layer 'layer4', channel 2: the sprites"):  # no sprite of channel 2
        build_browser(tmp_path / "out", psi, clusters, patches, ds, sprites)
    build_sprites(sprites["layer4"], patches["layer4"], ds, size, layer="layer4")
    assert build_browser(tmp_path / "out", psi, clusters, patches, ds, sprites)["pages"] > 0


def test_sprites_are_copied_where_links_fail(world, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(thumbs.os, "link", no_links)
    _build(tmp_path / "out", world, 1, monkeypatch)
    linked = tmp_path / "out" / "sprites" / slug("layer3") / "0.jpg"
    assert linked.stat().st_nlink == 1
    assert linked.read_bytes() == (tmp_path / "out-sprites" / "layer3" / "0.jpg").read_bytes()


def test_an_unreadable_image_names_its_layer_and_channel(tmp_path, monkeypatch):
    root = make_run(tmp_path / "run")
    psi, _, clusters, patches, ds, geom = load_run(root)
    bad = int(patches["layer4"].image_id.iloc[0])
    Path(ds.path[bad]).write_bytes(b"not an image")
    layer3 = patches["layer3"]  # every channel's sprite is cut, a dead one's too
    users = set(layer3[layer3.image_id == bad].channel)
    assert users
    crops._cached_image.cache_clear()
    with pytest.raises(DatasetError, match=r"thumbnails, layer 'layer3', channel (\d+): cannot read image") as e:
        _build(tmp_path / "out", (psi, clusters, patches, ds, geom["input_size"]), 2, monkeypatch)
    assert int(e.value.args[0].split("channel ")[1].split(":")[0]) in users
    assert not list((tmp_path / "out-sprites" / "layer3").glob(".thumbs-*"))


def test_a_failing_page_names_its_layer_and_channel(world, tmp_path, monkeypatch):
    page = browser.channel_page

    def failing(layer, row, *a):
        if layer == "layer4" and int(row["channel"]) == 3:
            raise ValueError("bad record")
        return page(layer, row, *a)

    monkeypatch.setattr(browser, "channel_page", failing)
    with pytest.raises(RuntimeError, match=r"browser page, layer 'layer4', channel 3: ValueError: bad record"):
        _build(tmp_path / "out", world, 2, monkeypatch)
    assert not list((tmp_path / "out").glob(".thumbs-*"))
