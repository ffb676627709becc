from polypsi.job import run
from polypsi.world.report import planted_units_stage

run(snakemake, planted_units_stage)  # noqa: F821
