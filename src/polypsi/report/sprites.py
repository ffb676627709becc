"""Rule sprites: the neuron browser's thumbnails of one layer, a sprite per channel.

A module of its own (not report.build), like k_scores: this image job's code version then leaves out the
report's figures and tables, and the embedding stage, so editing them does not cut the images again.
"""

from __future__ import annotations

from ..crops import crop_boxes
from ..io import read_json, read_table
from .thumbs import build_sprites


def sprites_stage(job) -> None:
    """Rule sprites: from the top-K table and the crop geometry alone (the crop boxes of the mined sites, as the
    calibrated patches table has them), so the images are cut beside embedding and scoring, not after the
    interventions."""
    layer = job.wildcard("layer")
    topk = read_table(job.input.topk)
    geometry = read_json(job.input.geometry)
    input_size = int(geometry["input_size"])
    boxes = crop_boxes(topk["u"].to_numpy(), topk["v"].to_numpy(), geometry["layers"][layer], input_size)
    patches = topk[["channel", "rank", "image_id"]].copy()
    patches[["y0", "x0", "y1", "x1"]] = boxes
    build_sprites(job.output.sprites, patches, read_table(job.input.dataset), input_size,
                  thumb=job.cfg.report.thumb_size, layer=layer, workers=job.threads, log_file=job.log)
