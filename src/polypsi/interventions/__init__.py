"""Causal patch-swap interventions (paper section 5.3) and their paired statistics.

For each chosen channel c and each of its top sites (image, u, v) the region of the
site's crop is changed under five conditions and c's activation at (u, v) is measured
before and after:

- Aligned: a patch of the site's own cluster, taken from another image, pasted over the region;
- Non-aligned: a patch of another cluster of the same channel, pasted over the region;
- Random: a top patch of an unrelated channel, pasted over the region;
- Shuffled-position: the Aligned patch pasted at a random square that does not overlap the region;
- Ablate-elsewhere: a fill (mean colour, zero or noise) of the same square as Shuffled-position.

The two "elsewhere" conditions share their square, so they differ only in what is pasted.
Patches are resized to the region when sizes differ and pasted without blending unless
`blend_px` > 0. Every random choice comes from a generator seeded by (seed, channel, site
rank), so a channel's trials do not depend on which other channels were chosen.

The change is normalised by the channel's top-1 activation over the dataset (`delta_norm`).
A trial that cannot be made (no donor, no free square) is kept as a row with a `status`
saying why and no activation; `summarize` drops it from the statistics and counts it.

Modules: trial (the record and its table row), plan (the seeded choices), run (pasting and
forward passes), statistics (paired tests), figures (the bar chart), stage (the workflow stages).
"""

from .figures import plot_summary
from .plan import plan_trials, select_channels
from .stage import interventions_stage, interventions_summary_stage
from .statistics import SUMMARY_COLUMNS, summarize
from .trial import CONDITIONS, Trial

__all__ = [
    "CONDITIONS", "SUMMARY_COLUMNS", "Trial", "interventions_stage", "plan_trials", "plot_summary",
    "run_interventions", "select_channels", "summarize", "interventions_summary_stage",
]


def __getattr__(name):
    """`run_interventions` on first use: the summary stage (tables only) imports this package without torch."""
    if name == "run_interventions":
        from .run import run_interventions  # lazy: imports torch and the model code

        return run_interventions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
