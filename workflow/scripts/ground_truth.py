from pathlib import Path

from polypsi.runtime import run_stage, stage
from polypsi.world.report import report_run

cfg, log, params = stage(snakemake)  # noqa: F821
run_stage(lambda: report_run(cfg, Path(snakemake.output.csv).parents[1]), log)  # noqa: F821
