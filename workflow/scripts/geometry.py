from polypsi.crops import measure_geometry
from polypsi.io import write_json
from polypsi.models import build_model
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
run_stage(lambda: write_json(measure_geometry(build_model(cfg), cfg), snakemake.output[0]), log)  # noqa: F821
