from pathlib import Path

from polypsi.runtime import get_logger, run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821


def main():
    out = Path(snakemake.output.images).parent  # noqa: F821
    if cfg.data.source == "world":
        from polypsi.world import render_world

        render_world(cfg.world, out)
    else:
        from polypsi.data import render_synthetic

        render_synthetic(cfg.data.synthetic, out)
    get_logger("polypsi", log).info("rendered %s images into %s", cfg.data.source, out / "images")


run_stage(main, log)
