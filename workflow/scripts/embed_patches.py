import numpy as np

from polypsi.embedding import embed_patches
from polypsi.io import read_json, read_table
from polypsi.runtime import resolve_device, run_stage, stage
from polypsi.scoring import channel_shard

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821


def main():
    topk = read_table(smk.input.topk)
    channels = channel_shard(np.unique(topk["channel"].to_numpy()), int(smk.wildcards.cshard), params["n_shards"])
    embed_patches(cfg, cfg.embedder, topk, read_table(smk.input.dataset), read_json(smk.input.geometry),
                  smk.wildcards.layer, channels, smk.output[0], resolve_device(cfg.device), log)


run_stage(main, log)
