"""The two workflow stages: the trials of one layer, and their statistics and figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..io import read_json, read_table, write_csv, write_table
from .figures import plot_message, plot_summary
from .statistics import summarize

if TYPE_CHECKING:  # a stage only reads the job's attributes; polypsi.job is the workflow's side
    from ..job import Job


def interventions_stage(job: Job) -> None:
    """The `interventions` rule: read the tables, load the model, run the trials, write one row per trial."""
    from ..models import extractor, load_model  # lazy: torch; the summary stage imports this module too
    from .run import run_interventions  # lazy: torch, as above

    cfg, layer = job.cfg, job.wildcard("layer")
    lg = job.logger("polypsi.interventions")
    device = job.device
    patches = read_table(job.input.patches)
    patches = patches.drop(columns=[c for c in ("embedding",) if c in patches])  # not needed here
    model = load_model(cfg, device)
    fx, pre = extractor(model, cfg, [layer], precision="fp32")  # interventions measure small changes: fp32
    lg.info("model loaded on %s; layer %s; settings %s", device, layer, cfg.interventions.model_dump())
    trials = run_interventions(fx, layer, read_table(job.input.psi), patches, read_table(job.input.dataset),
                               read_json(job.input.geometry), cfg.interventions, device, pre.input_size,
                               pre.mean, pre.std, logger=lg)
    write_table(trials, job.output.trials)
    lg.info("wrote %s (%d rows)", job.output.trials, len(trials))


NO_TRIALS = ("no channel had status ok and k_hat >= 2 (e.g. one-class data, or no channel split into clusters); "
             "nothing to intervene on: see the interventions log")


def interventions_summary_stage(job: Job) -> None:
    """The `interventions_summary` rule: statistics table and bar chart of one trial table."""
    unit, confidence = job.cfg.interventions.test_unit, job.cfg.interventions.confidence
    lg = job.logger("polypsi.interventions")
    trials = read_table(job.input.trials)
    summary = summarize(trials, unit=unit, confidence=confidence)
    if trials.empty:
        summary["dropped_reasons"] = NO_TRIALS
        lg.warning("no trials: %s", NO_TRIALS)
        write_csv(summary, job.output.csv)
        plot_message(job.output.png, "Patch-swap interventions", NO_TRIALS.replace("; ", ";\n"))
        return
    write_csv(summary, job.output.csv)
    layer = trials["layer"].iloc[0] if len(trials) else "?"
    title = (f"Patch-swap interventions, {layer}: {trials['channel'].nunique()} channels "
             f"(mean, {100 * confidence:g}% CI; paired t vs Aligned, unit={unit})")
    plot_summary(summary, trials, job.output.png, title=title, confidence=confidence)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lg.info("intervention summary:\n%s", summary.to_string(index=False))
