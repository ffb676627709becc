"""The summary figure."""

from __future__ import annotations

from polypsi.interventions.figures import plot_summary
from polypsi.interventions.statistics import summarize

from .worlds import random_trials


def test_plot_writes_png(tmp_path):
    trials = random_trials()
    plot_summary(summarize(trials), trials, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
