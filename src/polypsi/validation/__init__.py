"""Ground truths the scores are checked against: synthetic OR-units and a plug-in's known units."""
