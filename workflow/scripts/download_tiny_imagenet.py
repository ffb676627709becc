from polypsi.job import run
from polypsi.data import download_tiny_imagenet_stage

run(snakemake, download_tiny_imagenet_stage)  # noqa: F821
