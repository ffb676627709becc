"""The two workflow stages: the trials of one layer, and their statistics and figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..io import read_json, read_table, write_csv, write_table
from ..runtime import builder_threads
from .figures import plot_insert, plot_message, plot_summary
from .causal import CHANNEL_COLUMNS, agreement, attach, channel_table, cluster_table, with_truth
from .statistics import protocol_of, summarize

if TYPE_CHECKING:  # a stage only reads the job's attributes; polypsi.job is the workflow's side
    from ..job import Job


def interventions_stage(job: Job) -> None:
    """The `interventions` rule: read the tables, load the model, run each protocol's trials, write one row per trial.

    Rows of the two protocols share the table (`protocol`: replace, insert); the insertion rows carry their
    cluster's test and their channel's causal polysemanticity, also written per channel (`output.causal`).
    """
    from ..models import extractor, load_model  # lazy: torch; the summary stage imports this module too
    from .insert import run_insertions  # lazy: torch, as above
    from .run import run_interventions  # lazy: torch, as above

    cfg, layer = job.cfg, job.wildcard("layer")
    ic = cfg.interventions
    lg = job.logger("polypsi.interventions")
    device = job.device
    workers = builder_threads(device, job.threads)  # threads that build the next images while the model runs
    with_emb = read_table(job.input.patches)  # insertion picks donors near the clusters' prototypes
    patches = with_emb.drop(columns=["embedding"], errors="ignore")  # not needed by replacement
    model = load_model(cfg, device)
    fx, pre = extractor(model, cfg, [layer], precision="fp32")  # interventions measure small changes: fp32
    lg.info("model loaded on %s; layer %s; settings %s", device, layer, ic.model_dump())
    psi, dataset, geometry = read_table(job.input.psi), read_table(job.input.dataset), read_json(job.input.geometry)
    parts = []
    if "replace" in ic.protocols:
        trials = run_interventions(fx, layer, psi, patches, dataset, geometry, ic, device, pre.input_size,
                                   pre.mean, pre.std, logger=lg, workers=workers)
        trials.insert(1, "protocol", "replace")
        parts.append(trials)
    clusters = channels = None
    if "insert" in ic.protocols:
        ins, sig = run_insertions(fx, layer, psi, with_emb, dataset, geometry, ic, device, pre.input_size,
                             pre.mean, pre.std, logger=lg, workers=workers)
        sizes = patches.groupby(["channel", "cluster"]).size()
        clusters = cluster_table(ins, ic.insert.alpha, ic.insert.min_effect, ic.confidence, sizes, sig,
                                 ic.insert.same_cause)
        channels = channel_table(ins, clusters)
        ins = attach(ins, clusters, channels)
        ins.insert(1, "protocol", "insert")
        parts.append(ins)
        lg.info("causal polysemanticity, %d channels: n_driving counts %s, n_causes counts %s", len(channels),
                channels["n_driving"].value_counts().sort_index().to_dict(),
                channels["n_causes"].value_counts().sort_index().to_dict())
    trials = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    write_table(trials, job.output.trials)
    lg.info("wrote %s (%d rows)", job.output.trials, len(trials))
    if "causal" in job.output:  # the per-channel table (no insertion protocol: its columns, no rows)
        write_table(pd.DataFrame(columns=CHANNEL_COLUMNS) if channels is None else channels, job.output.causal)


NO_TRIALS = ("no channel had status ok and k_hat >= 2 (e.g. one-class data, or no channel split into clusters); "
             "nothing to intervene on: see the interventions log")
NOT_RUN = "the {} protocol is not in interventions.protocols"
NO_INSERT = "no live channel to insert into (see the interventions log)"


def interventions_summary_stage(job: Job) -> None:
    """The `interventions_summary` rule: statistics table and bar charts of one trial table; the per-channel
    causal table (with the planted truth where there is one) and its agreement with the index."""
    unit, confidence = job.cfg.interventions.test_unit, job.cfg.interventions.confidence
    lg = job.logger("polypsi.interventions")
    trials = read_table(job.input.trials)
    summary = summarize(trials, unit=unit, confidence=confidence)
    protocol = protocol_of(trials)
    replace, insert = trials[protocol == "replace"], trials[protocol == "insert"]
    if replace.empty:
        reason = NO_TRIALS if "replace" in job.cfg.interventions.protocols else NOT_RUN.format("replace")
        summary.loc[summary["protocol"] == "replace", "dropped_reasons"] = reason
        lg.warning("no replacement trials: %s", reason)
        plot_message(job.output.png, "Patch-swap interventions", reason.replace("; ", ";\n"))
    else:
        layer = replace["layer"].iloc[0]
        title = (f"Patch-swap interventions, {layer}: {replace['channel'].nunique()} channels "
                 f"(mean, {100 * confidence:g}% CI; paired t vs Aligned, unit={unit})")
        plot_summary(summary[summary["protocol"] == "replace"], replace, job.output.png, title=title,
                     confidence=confidence)
    write_csv(summary, job.output.csv)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lg.info("intervention summary:\n%s", summary.to_string(index=False))
    if "insert_png" not in job.output:
        return
    channels = read_table(job.input.causal)
    truth_file = job.input.truth if "truth" in job.input else []
    truth_file = truth_file if isinstance(truth_file, str) else (truth_file[0] if truth_file else None)
    truth = pd.read_csv(truth_file) if truth_file else None  # a plug-in's units, e.g. the planted world
    channels = with_truth(channels, truth)
    write_csv(channels, job.output.causal)
    agree = agreement(channels)
    write_csv(agree, job.output.agreement)
    if insert.empty:
        reason = NOT_RUN.format("insert") if "insert" not in job.cfg.interventions.protocols else NO_INSERT
        plot_message(job.output.insert_png, "Insertion into neutral images", reason)
        return
    plot_insert(summary[summary["protocol"] == "insert"], insert, channels, job.output.insert_png,
                confidence=confidence)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lg.info("causal polysemanticity vs the index%s:\n%s", " and the truth" if truth is not None else "",
                agree.to_string(index=False))
