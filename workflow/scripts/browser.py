from polypsi.job import run
from polypsi.report.build import browser_stage

run(snakemake, browser_stage)  # noqa: F821
