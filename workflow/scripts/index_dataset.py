from polypsi.data import write_dataset_index
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
run_stage(lambda: write_dataset_index(cfg, snakemake.output[0], params["world_dir"]), log)  # noqa: F821
