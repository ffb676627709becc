"""Registers the planted world's dataset, model, embedder and vocabulary with polypsi's source registry.

Listed under the `polypsi.sources` entry-point group in pyproject.toml; the core never imports
the world. Every source here reads the `world` config section.
"""

from polypsi.sources import Source, register

WORLD = ("world",)

register(Source("dataset", "world", "polypsi.data:index_imagefolder_source",
                render="polypsi.world.render:render_for_config", rendered=("world.json",), sections=WORLD,
                doc="procedurally rendered images of coloured shapes (the planted world)"))
register(Source("model", "world", "polypsi.world.model:build_for_config", sections=WORLD,
                doc="the world's CNN with planted monosemantic, polysemantic and dead channels"))
register(Source("embedder", "world", "polypsi.world.embedder:embedder_for_config", sections=WORLD,
                doc="the world's small CLIP-like image-text embedder"))
register(Source("vocabulary", "world", "polypsi.world.embedder:vocabulary", sections=WORLD,
                doc="the world's concepts, templates and unrelated concepts"))
