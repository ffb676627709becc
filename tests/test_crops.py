import numpy as np
import pytest
import torch
from PIL import Image

from polypsi.crops import crop_box, crop_boxes, extract_crops, load_image
from polypsi.errors import DatasetError


def test_crop_box_is_shifted_inside_the_image():
    geom = {"stride": 16.0, "offset": 0.0, "crop": 96}
    assert crop_box(7, 7, geom, 224) == (64, 64, 160, 160)
    assert crop_box(0, 0, geom, 224) == (0, 0, 96, 96)
    assert crop_box(13, 13, geom, 224) == (128, 128, 224, 224)
    big = {"stride": 32.0, "offset": 0.0, "crop": 400}
    assert crop_box(3, 3, big, 224) == (0, 0, 224, 224)
    u, v = np.array([0, 7, 13]), np.array([13, 7, 0])
    boxes = crop_boxes(u, v, geom, 224)
    assert [tuple(b) for b in boxes] == [crop_box(a, b, geom, 224) for a, b in zip(u, v)]


def test_load_image_and_extract_crops(tmp_path):
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[:10, :10] = [255, 0, 0]
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", 40)
    assert img.shape == (3, 40, 40) and img.max() <= 1 and img[0, 5, 5] == 1
    crops = extract_crops([str(tmp_path / "a.png")] * 2, np.array([[0, 0, 16, 16], [24, 24, 40, 40]]), 40, 8)
    assert crops.shape == (2, 3, 8, 8)
    assert torch.allclose(crops[0, 0], torch.ones(8, 8)) and crops[1].max() == 0
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for bad in ("missing.png", "broken.png"):  # the user's error: names the file and the fix
        with pytest.raises(DatasetError, match=rf"cannot read image .*{bad}.*replace it .* or remove it"):
            load_image(tmp_path / bad, 8)
