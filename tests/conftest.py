import os

import numpy as np
import pytest
import torch
from PIL import Image

# Tests never reach a hub: an accidental download fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (`make test` runs one worker per core, a test file per worker) each worker keeps to its
# share of the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def pytest_collection_modifyitems(config, items):
    """The end-to-end files (marked slow) first: with `--dist loadfile --no-loadscope-reorder` each starts
    at once on a worker of its own and the quick files fill the other worker around them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def write_images(folder, n, size=32, seed=0, ext=".png"):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}{ext}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def tiny_imagenet(tmp_path):
    """A 3-class stand-in with Tiny-ImageNet's own layout."""
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander, Salamandra salamandra\n"
        "n01641577\tbullfrog, Rana catesbeiana\nn00000001\tunused\n"
    )
    for j, w in enumerate(wnids):
        write_images(root / "train" / w / "images", 2, seed=j, ext=".JPEG")
    vimgs = write_images(root / "val" / "images", 6, seed=9, ext=".JPEG")
    lines = [f"{p.name}\t{wnids[i % 3]}\t0\t0\t10\t10" for i, p in enumerate(vimgs)]
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root
