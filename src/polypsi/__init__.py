"""polypsi: the null-calibrated Polysemanticity Index (PSI) for vision-model units."""

__version__ = "0.1.0"
