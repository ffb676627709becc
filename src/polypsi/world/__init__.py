"""The planted polysemanticity world: images, a model and an embedder with known ground truth.

- `render_world(world, out_dir)`: images/<class>/<nnnnn>.png and world.json.
- `build_model(world)`: the model under study (ResNet-like stages, planted channels).
- `ground_truth(world)`: per channel of layer3/layer4: kind, number of concepts, concepts.
- `build_embedder(world)`: the image-text embedder (open_clip's interface), with
  `prompt_concepts`, `templates` and `null_concepts` for the prompt sets.
- `ground_truth_report(...)`: AUROC, K-hat confusion and naming accuracy against the truth.
"""

from polypsi.world.embedder import build_embedder, null_concepts, prompt_concepts, templates
from polypsi.world.model import build_model
from polypsi.world.render import render_world, world_spec
from polypsi.world.report import ground_truth_report
from polypsi.world.truth import ground_truth

__all__ = [
    "build_embedder",
    "build_model",
    "ground_truth",
    "ground_truth_report",
    "null_concepts",
    "prompt_concepts",
    "render_world",
    "templates",
    "world_spec",
]
