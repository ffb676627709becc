from polypsi.job import run
from polypsi.scoring import or_units_stage

run(snakemake, or_units_stage)  # noqa: F821
