from polypsi.job import run
from polypsi.report.build import report_stage

run(snakemake, report_stage)  # noqa: F821
