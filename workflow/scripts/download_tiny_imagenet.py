from polypsi.job import run
from polypsi.data import download_stage

run(snakemake, download_stage)  # noqa: F821
