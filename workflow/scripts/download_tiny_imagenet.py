from polypsi.data import download_tiny_imagenet
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
run_stage(lambda: download_tiny_imagenet(cfg.data), log)
