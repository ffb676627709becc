"""The planted polysemanticity world: images, a model and an embedder with known ground truth.

A plug-in: `polypsi.world.plugin` registers its sources (dataset, model, embedder, vocabulary)
with the core's registry. Modules:
- `render`: `render_world(world, out_dir)` writes images/<class>/<nnnnn>.png and world.json.
- `model`: `build_model(world)`, the model under study (ResNet-like stages, planted channels).
- `truth`: `ground_truth(world)`, per channel of layer3/layer4: kind, number of concepts, concepts.
- `embedder`: `build_embedder(world)`, the image-text embedder (open_clip's interface), and the
  prompt vocabulary.
- `report`: AUROC, K-hat confusion and naming accuracy against the truth (the ground_truth rule).

This file imports nothing, so that registering the plug-in costs no import of torch.
"""
