"""The neuron browser in a real headless Chromium: the table loads, sorts by PSI, filters, and a channel
page shows its patches. Needs Debian's chromium + chromium-driver and selenium (see docs/report.md);
skipped with the install lines when they are missing."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from .fixtures import K, LAYERS, load_run, make_run

from polypsi.report.browser import build_browser

pytestmark = pytest.mark.browser

INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
CHROMIUM = os.environ.get("POLYPSI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("POLYPSI_CHROMEDRIVER") or shutil.which("chromedriver")


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
    root = make_run(tmp_path_factory.mktemp("run"))
    psi, _, clusters, patches, ds, geom = load_run(root)
    build_browser(root / "browser", psi, clusters, patches, ds, geom["input_size"], title="synthetic run")
    return root / "browser", psi, clusters


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
    n = sum(len(df) for df in psi.values())
    driver.get((out / "index.html").as_uri())
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#channels tbody tr")) == n
    assert f"{n} of {n}" in driver.find_element(By.ID, "count").text

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
    driver.get((out / "index.html").as_uri())
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    driver.find_element(By.CSS_SELECTOR, "#channels th[data-key=psi]").click()
    first = driver.find_element(By.CSS_SELECTOR, "#channels tbody tr")
    layer = first.find_element(By.CSS_SELECTOR, "td[data-key=layer]").text
    channel = int(first.find_element(By.CSS_SELECTOR, "td[data-key=channel]").text)
    best = max(((l, df.loc[df.psi.idxmax()]) for l, df in psi.items()), key=lambda t: t[1].psi)
    assert (layer, channel) == (best[0], int(best[1].channel))

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


def test_dead_channel_page_says_why(driver, site):
    from selenium.webdriver.common.by import By

    out, psi, _ = site
    layer = next(iter(psi))
    dead = int(psi[layer][psi[layer].status != "ok"].channel.iloc[0])
    driver.get((out / "channels" / layer / f"{dead}.html").as_uri())
    assert "dead" in driver.find_element(By.CSS_SELECTOR, "table.summary").text
    assert "No mined patches" in driver.page_source


def test_sprite_tiles_and_thumbnails_match_the_crops(tmp_path):
    from PIL import Image

    from polypsi.crops import load_image
    from polypsi.io import read_table
    from polypsi.report.thumbs import thumbnails, write_sprite

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
