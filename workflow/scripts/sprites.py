from polypsi.job import run
from polypsi.report.sprites import sprites_stage

run(snakemake, sprites_stage)  # noqa: F821
