"""A small image-text embedder for the planted world, with open_clip's interface.

It plays CLIP's part: a CNN image tower and a bag-of-words text tower map into one
64-d space. It was trained contrastively on rendered crops and their generated
captions ("a photo of a teal crescent"; see scripts/train_world_embedder.py), over
the whole concept universe (all 56 colour-shape names, not one world's 12), so it
serves every world seed. At use it sees only pixels and prompt text; it never reads
which channel was planted on what.

Words it never saw in training (the unrelated-domain prompts of the D-null) get a
fixed pseudo-random vector each (hashed from the word), with the norm of a trained
content word: unknown concepts land in deterministic random directions, as in the
issue's design, rather than all on one <unk> vector (which would make every null
prompt identical and the D-null degenerate).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polypsi.config import WorldConfig
from polypsi.embedding import EmbedderParts
from polypsi.prompts import read_list
from polypsi.world.concepts import COLOURS, SHAPES, UNIVERSE

WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "world" / "embedder.pt"
CONTEXT = 16
HASH_SEED = 20240
DIM = 64
IMAGE_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)

TEMPLATES = (
    "a photo of a {}.",
    "a rendering of a {}.",
    "a picture of the {}.",
    "a {} on a cluttered background.",
    "a drawing of a {}.",
    "a close-up of the {}.",
)


def templates() -> list[str]:
    """Prompt templates (each with one {}), six as in the paper."""
    return list(TEMPLATES)


def prompt_concepts() -> list[str]:
    """The main prompt set's concepts: the whole colour-shape universe (56 names).

    Like CLIP's vocabulary it is larger than what any one world contains (12 concepts
    by default), so naming a cluster is a real choice, with look-alikes nearby. It is the
    embedder's vocabulary, not a world's: one embedder, trained on the universe, serves
    every world, so no prompt list depends on the world config.
    """
    return [c.name for c in UNIVERSE]


def null_concepts() -> list[str]:
    """Unrelated-domain concepts for the D-null (the project's shipped list, minus any colour/shape word)."""
    banned = set(COLOURS) | set(SHAPES)
    items = read_list("builtin:unrelated_concepts.txt")
    return [c for c in items if not banned & set(_words(c))]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def base_vocabulary() -> list[str]:
    """Words with trained vectors: colours, shapes and the template words."""
    words = list(COLOURS) + list(SHAPES)
    for t in TEMPLATES:
        words += [w for w in _words(t) if w not in words]
    return words


class Tokenizer:
    """list[str] -> LongTensor [B, CONTEXT]: 0 = padding, 1..V = known words, V+1.. = hashed unknown words."""

    def __init__(self, vocabulary: list[str]):
        self.vocabulary = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.vocabulary)}

    def token(self, word: str) -> int:
        if word in self.index:
            return self.index[word]
        return len(self.vocabulary) + 1 + zlib.crc32(word.encode())  # 32-bit hash: no practical collisions

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.token(w) for w in _words(t)][:CONTEXT]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _block(cin: int, cout: int, stride: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class WorldEmbedder(nn.Module):
    """CNN image tower + bag-of-words text tower into a shared DIM-d space."""

    def __init__(self, vocabulary: list[str], width: int = 32):
        super().__init__()
        self.tokenizer = Tokenizer(vocabulary)
        self.image_size, self.mean, self.std = IMAGE_SIZE, MEAN, STD
        w = width
        self.visual = nn.Sequential(
            _block(3, w, 2, 5), _block(w, w, 1),  # 16 px
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),  # 8 px
            _block(2 * w, 3 * w, 2),  # 4 px
        )
        # Pool the 4x4 map twice: centre-weighted (crops are centred on the unit's site) and plain.
        yy, xx = torch.meshgrid(torch.arange(4) - 1.5, torch.arange(4) - 1.5, indexing="ij")
        centre = torch.exp(-(xx**2 + yy**2) / 2.0)
        self.register_buffer("centre", (centre / centre.sum()).view(1, 1, 4, 4))
        self.image_proj = nn.Sequential(nn.Linear(6 * w, 128), nn.ReLU(), nn.Linear(128, DIM))
        self.token_embedding = nn.Embedding(len(vocabulary) + 1, DIM, padding_idx=0)
        self.text_proj = nn.Linear(DIM, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        h = self.visual(x)
        if h.shape[-1] != 4:  # inputs of another size: pool to the 4x4 grid the head expects
            h = F.adaptive_avg_pool2d(h, 4)
        pooled = torch.cat([(h * self.centre).sum((2, 3)), h.mean((2, 3))], 1)
        z = self.image_proj(pooled)
        return F.normalize(z, dim=-1) if normalize else z

    def _token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        v = len(self.tokenizer.vocabulary) + 1
        out = self.token_embedding(tokens.clamp(max=v - 1))
        # Unknown words: a fixed random unit direction per word (seeded by its hash), scaled
        # like a trained content word.
        scale = self.token_embedding.weight[1 : 1 + len(COLOURS) + len(SHAPES)].norm(dim=1).mean()
        unknown = tokens >= v
        for t in tokens[unknown].unique().tolist():
            g = torch.Generator().manual_seed(HASH_SEED + t)
            vec = torch.randn(DIM, generator=g)
            out[tokens == t] = (vec / vec.norm() * scale).to(out)
        return out

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = tokens.to(self.token_embedding.weight.device)
        mask = (tokens > 0).unsqueeze(-1).float()
        bag = (self._token_vectors(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        z = self.text_proj(bag)
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, image: torch.Tensor, tokens: torch.Tensor):
        return self.encode_image(image, True), self.encode_text(tokens, True), self.logit_scale.exp()


def build_embedder(world: WorldConfig | None = None, weights: str | Path | None = None) -> WorldEmbedder:
    """The trained world embedder (eval mode). `world` is accepted for the interface: one
    embedder serves every world, since all worlds draw from the same concept universe."""
    path = Path(weights) if weights is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"world embedder weights {path} are missing; retrain them with "
            "`.venv/bin/python scripts/train_world_embedder.py` (a few minutes on CPU)"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = WorldEmbedder(blob["vocabulary"], blob["width"])
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.requires_grad_(False)
    return model.eval()


def embedder_for_config(emb, cfg) -> EmbedderParts:
    """The registry's `world` embedder source."""
    w = build_embedder(cfg.world)
    return EmbedderParts(w, w.tokenizer, w.image_size, w.mean, w.std)


def vocabulary(cfg, which: str) -> list[str]:
    """The registry's `world` vocabulary: `prompts.concepts|templates|null_concepts: world`."""
    lists = {"concepts": prompt_concepts, "templates": templates, "null_concepts": null_concepts}
    return lists[which]()
