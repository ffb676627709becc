"""The typed configuration: the single source of truth for every setting.

`config/schema.json` is generated from these classes (`python -m polypsi.config`)
and a test keeps the two in sync. The Snakefile validates the merged config with
`load_config`, which names the offending key on any error.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from . import sources
from .errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _source(kind: str, default: str, description: str):
    """A `source` field: any name registered for `kind` in the source registry (the one table of sources)."""

    def schema(s: dict) -> None:
        s["enum"] = sources.names(kind)

    return Field(default, description=description, json_schema_extra=schema)


def _check_source(kind: str, name: str) -> str:
    if name not in sources.names(kind):
        known = ", ".join(sources.names(kind))
        raise ValueError(f"{name!r} is not a registered {kind} source; known: {known}")
    return name


# Marks a field that changes speed, and results only by float rounding (batch sizes, memory layout, device): the workflow
# keeps it out of the rules' params, so changing it reruns nothing.
RUNTIME = {"runtime": True}


class _Section(BaseModel):
    # A misspelt key must stop the run, not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorldConfig(_Section):
    """The procedural planted world (dataset, model and embedder built from one seed)."""

    seed: int = Field(0, description="Seed of the world: images, model and embedder.")
    n_images: int = Field(600, ge=1, description="Number of images rendered.")
    image_size: int = Field(64, ge=16, description="Rendered image size in pixels (Tiny-ImageNet: 64).")
    n_classes: int = Field(10, ge=2, description="Number of image classes.")
    n_concepts: int = Field(12, ge=2, description="Number of named concepts drawn in the world.")
    clutter: float = Field(0.5, ge=0.0, le=1.0, description="Amount of background clutter (0 = plain).")
    concept_similarity: float = Field(
        0.3, ge=0.0, le=1.0, description="How alike pairs of concepts look (0 = all distinct)."
    )
    noise: float = Field(0.05, ge=0.0, le=1.0, description="Pixel noise standard deviation.")
    polysemantic_share: float = Field(
        0.4, ge=0.0, le=1.0, description="Share of planted channels that respond to 2-3 concepts."
    )
    dead_share: float = Field(0.1, ge=0.0, le=1.0, description="Share of planted channels that never fire.")
    distractors: float = Field(
        2.0, ge=0.0, le=4.0, description="Mean number of small distractor objects per image (Poisson, at most 4)."
    )
    channels: int = Field(48, ge=4, description="Channels in each of the world model's layer3 and layer4.")
    crosstalk: float = Field(
        0.1, ge=0.0, le=1.0, description="Weak random wiring from every concept into every live channel (entanglement)."
    )


class SyntheticConfig(_Section):
    """Tiny generated image set used by the offline smoke run (coloured shapes on noise)."""

    n_images: int = Field(48, ge=2, description="Number of generated images.")
    n_classes: int = Field(4, ge=2, le=12, description="Number of (colour, shape) classes.")
    image_size: int = Field(64, ge=16, description="Generated image size in pixels.")
    seed: int = Field(0, description="Seed of the generated images.")


class DataConfig(_Section):
    source: str = _source(
        "dataset", "tiny_imagenet",
        description="Dataset layout: Tiny-ImageNet's own, an ImageFolder tree, the planted world, or generated shapes.",
    )
    root: str = Field("data/tiny-imagenet-200", description="Dataset root folder.")
    split: Literal["train", "val"] = Field("val", description="Tiny-ImageNet split to scan.")
    max_images: Optional[int] = Field(
        None, ge=1, description="Use only the first N images (after sorting; unreadable ones among them are skipped)."
    )
    max_pixels: int = Field(
        89_478_485, ge=1, description="Images with more pixels (read from the header) are skipped as oversized."
    )
    max_skipped_share: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Unreadable or oversized images are skipped (listed in skipped.csv); past this share the run stops.",
    )
    download: bool = Field(True, description="Download Tiny-ImageNet when the root is absent.")
    url: str = Field("http://cs231n.stanford.edu/tiny-imagenet-200.zip", description="Tiny-ImageNet archive URL.")
    md5: Optional[str] = Field(
        "90528d7ca1a48142e341f4ef8d21d0de", description="MD5 of the archive; null skips the check."
    )
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("source")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _check_source("dataset", v)


class ModelConfig(_Section):
    source: str = _source(
        "model", "torchvision",
        description="torchvision or timm architecture by name, your own module (python: model.entry), "
        "or the planted world's model.",
    )
    name: str = Field("resnet50", description="torchvision builder or timm architecture name, e.g. resnet50.")
    entry: Optional[str] = Field(
        None,
        description="source python: 'package.module:function' or 'path/to/file.py:function' returning an "
        "nn.Module (paths relative to where snakemake runs).",
    )
    kwargs: dict[str, Any] = Field(
        {}, description="Keyword arguments of the python entry, of timm.create_model or of torchvision's builder."
    )
    weights: Optional[str] = Field(
        "IMAGENET1K_V1",
        description="torchvision: weights enum member; timm: pretrained tag or `default`; null = random init (seeded).",
    )
    checkpoint: Optional[str] = Field(
        None, description="Local state_dict file; overrides `weights` (no download)."
    )
    init_seed: int = Field(0, description="Seed for random initialisation when no weights are given.")
    layers: list[str] = Field(["layer3", "layer4"], min_length=1, description="Named modules to analyse.")
    input_size: Optional[int] = Field(
        None, ge=8, description="Images are resized (upsampled) to this size; null = the model's own "
        "(timm's data config, a python entry's `polypsi_preprocessing`, else 224).",
    )
    mean: Optional[list[float]] = Field(
        None, min_length=3, max_length=3, description="Input normalisation mean (RGB); null = the model's own, else ImageNet's."
    )
    std: Optional[list[float]] = Field(
        None, min_length=3, max_length=3, description="Input normalisation std (RGB); null = the model's own, else ImageNet's."
    )
    prefix_tokens: Optional[int] = Field(
        None, ge=0, description="Token layers ([B, N, C]): tokens before the patch grid (class, registers); "
        "null = from the model (timm's num_prefix_tokens, torchvision's class token) or N minus the largest square.",
    )

    @field_validator("source")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _check_source("model", v)

    @model_validator(mode="after")
    def _entry(self) -> "ModelConfig":
        if self.source == "python" and not self.entry:
            raise ValueError("model.source: python needs model.entry ('package.module:function' or 'file.py:function')")
        return self


class MiningConfig(_Section):
    topk: int = Field(50, ge=2, description="K: top-activating sites kept per channel.")
    one_site_per_image: bool = Field(
        True, description="Keep at most one site per image (paper: false; neighbours make near-duplicate crops)."
    )
    batch_size: int = Field(
        32, ge=1, description="Images per forward pass (activations change by float rounding only).",
        json_schema_extra=RUNTIME,
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 changes top-K rankings; keep fp32 unless speed matters more than exactness."
    )
    channels_last: bool = Field(
        True, description="channels_last memory format (faster convs; activations change by float rounding only).",
        json_schema_extra=RUNTIME,
    )


class CropConfig(_Section):
    size_rule: Literal["fixed", "erf"] = Field(
        "fixed", description="fixed: `size` per layer; erf: square holding `erf_mass` of the measured gradient mass."
    )
    size: dict[str, int] = Field(
        {"layer3": 96, "layer4": 160},
        description="Crop side in input pixels per layer (size_rule=fixed); at most the model's input size.",
    )
    erf_mass: float = Field(0.9, gt=0.0, lt=1.0, description="Gradient mass the crop holds (size_rule=erf).")
    center: Literal["derived", "half_stride"] = Field(
        "derived",
        description="derived: offset measured from the model's gradients; half_stride: (i + 0.5) x stride.",
    )


class EmbedderConfig(_Section):
    source: str = _source("embedder", "open_clip", "open_clip model, or the planted world's embedder.")

    @field_validator("source")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _check_source("embedder", v)
    name: str = Field("ViT-B-32", description="open_clip architecture name.")
    pretrained: Optional[str] = Field("openai", description="open_clip pretrained tag; null = random init.")
    checkpoint: Optional[str] = Field(None, description="Local open_clip checkpoint file; overrides `pretrained`.")
    init_seed: int = Field(0, description="Seed for random initialisation when nothing is pretrained.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 when `device: cuda`, else fp32 (`device: auto` too: the config decides, not the "
        "hardware found, so a run resumed elsewhere keeps one precision). The resolved value reruns the embeddings.",
    )
    batch_size: int = Field(64, ge=1, description="Crops per embedding batch.", json_schema_extra=RUNTIME)

    def resolved_precision(self, device: str) -> Literal["fp32", "bf16"]:
        """The precision this embedder runs at on the run's `device` setting (not on the hardware found)."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if device == "cuda" else "fp32"


class PromptConfig(_Section):
    include_class_names: bool = Field(True, description="Add the dataset's class names as concepts.")
    concepts: str = Field(
        "builtin:generic_concepts.txt", description="File of generic concepts, one a line (builtin: = shipped)."
    )
    templates: str = Field(
        "builtin:templates.txt", description="File of prompt templates with one {} (`world`: the world's)."
    )
    null_concepts: str = Field(
        "builtin:unrelated_concepts.txt", description="Unrelated-domain concepts for the D-null."
    )


class StatsConfig(_Section):
    k_min: int = Field(2, ge=2, description="Smallest K' tried.")
    k_max: int = Field(5, ge=2, description="Largest K' tried.")
    n_init: int = Field(10, ge=1, description="k-means restarts per K'.")
    max_iter: int = Field(100, ge=1, description="Lloyd iterations per k-means restart (they stop early at a fixed point).")
    gap_level: Literal["concept", "prompt"] = Field(
        "concept", description="D's purity gap over concepts (templates averaged) or single prompts (paper)."
    )
    backend: Literal["torch", "sklearn"] = Field("torch", description="Batched torch scorer or sklearn reference.")
    kmeans: Literal["spherical", "euclidean"] = Field(
        "spherical",
        description="spherical: cosine k-means (unit centroids); euclidean: sklearn KMeans on the unit vectors.",
    )

    @model_validator(mode="after")
    def _k_range(self) -> "StatsConfig":
        if self.k_max < self.k_min:
            raise ValueError(f"stats.k_max ({self.k_max}) must be >= stats.k_min ({self.k_min})")
        return self


class NullConfig(_Section):
    m: int = Field(20, ge=3, description="M: null draws per component.")
    seed: int = Field(0, description="Base seed of all null draws.")
    s_null: Literal["gaussian", "rotation"] = Field(
        "gaussian",
        description="gaussian: patches redrawn given their mean and covariance (structure-free); "
        "rotation: paper, rotates the embedding space (degenerate: every cosine is unchanged).",
    )
    q_null: Literal["permutation"] = Field("permutation", description="Permutation of the cluster labels (paper).")
    d_null: Literal["unrelated_prompts", "random_directions", "shuffle"] = Field(
        "unrelated_prompts",
        description="unrelated_prompts: real prototypes vs a random subset of the unrelated-domain prompts; "
        "random_directions: prototypes of structure-free patches vs the main prompts; "
        "shuffle: paper's shuffled prompt-concept assignment (degenerate at prompt level).",
    )
    d_null_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="unrelated_prompts: share of the unrelated concepts drawn per D-null draw "
        "(capped at the main set's concept count).",
    )


class CalibrationConfig(_Section):
    """How raw scores become hats: read by calibration only, so changing it re-scores nothing."""

    eps: float = Field(1e-6, gt=0.0, description="epsilon in sigmoid((x - mu) / (sd + eps)).")
    sd_tol: float = Field(1e-4, ge=0.0, description="Null sd below this flags the channel in `status`.")
    holdout_null_neurons: bool = Field(
        True, description="Score one held-out null draw per channel as a null neuron (for the AUROC)."
    )


class IndexConfig(_Section):
    """The polysemanticity index in the `index` column (docs/index.md); read by calibration only."""

    method: Literal["contrast", "psi"] = Field(
        "contrast",
        description="contrast: balanced concept contrast of the channel's clusters minus the layer's null median "
        "(chance level 0); psi: the paper's PSI (S_hat x Q_hat x D_hat).",
    )


class NeuronEmbeddingConfig(_Section):
    """Neuron embeddings (Foote 2024): each top site seen by the model itself, beside the embedder's view."""

    enabled: bool = Field(
        True, description="Write the neuron embeddings of every analysed layer's top sites (a default target)."
    )
    module: dict[str, str] = Field(
        {},
        description="Per layer, the module whose inputs times the channel's weights make its neuron embeddings "
        "(a Conv2d or Linear producing the layer's channels on its grid); a layer not listed takes the model's "
        "own declaration, else the last such module inside the layer (docs/neuron_embeddings.md).",
    )
    batch_size: int = Field(32, ge=1, description="Images per forward pass.", json_schema_extra=RUNTIME)
    foote_threshold: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Cosine above which two top examples' neuron embeddings are joined in Foote's similarity graph "
        "(`foote_k` counts its connected components). The paper states no value; 0.5 is this project's choice.",
    )


class ValidationConfig(_Section):
    """Synthetic OR-units (a ground truth on any model) and the recovery report."""

    or_units: bool = Field(True, description="Add synthetic 'A OR B' units per layer (their own rows, unit_kind or_unit).")
    or_units_per_layer: int = Field(64, ge=1, description="OR-units per layer (fewer if fewer eligible pairs exist).")
    or_far_quantile: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Without a planted truth, a pair is eligible when its parts' prototype cosine is in this lowest "
        "quantile of the layer's live-channel pairs.",
    )
    seed: int = Field(0, description="Seed of the choice of OR-unit pairs and of the bootstrap.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of the recovery AUROC's 95% interval.")


class ShardConfig(_Section):
    images: int = Field(1, ge=1, description="Image shards for mining (tables identical to the bit for any count).")
    channels: int = Field(
        1, ge=1, description="Channel shards per layer for embedding and scoring (at most a layer's channel count)."
    )
    draws: int = Field(1, ge=1, description="Jobs the M+1 scoring draws (real + nulls) are split into.")
    min_images: int = Field(
        256, ge=1,
        description="Image shards are capped so that each holds at least this many images, where the image count "
        "is known when the run is planned (generated data, the planted world, Tiny-ImageNet, data.max_images): "
        "a mining job pays a process start, a model load and a warm-up pass, worth it for a few batches at least.",
    )


class InsertConfig(_Section):
    """The insertion protocol: a channel's cluster patches pasted into images where it is silent."""

    channels: Optional[int] = Field(
        64, ge=1,
        description="Live channels tested, evenly spread over the index ranking (so the rank correlation with "
        "the index spans its range); null = every live channel of the layer.",
    )
    images: int = Field(3, ge=1, description="Neutral images per channel, each with its own donors.")
    donors: int = Field(
        4, ge=2, description="Donor patches per cluster and per control on each neutral image (the paired units)."
    )
    neutral_quantile: float = Field(
        0.25, gt=0.0, lt=1.0,
        description="A neutral image's largest activation of the channel over all sites is at most this quantile "
        "of those maxima over the scanned images.",
    )
    scan_images: Optional[int] = Field(
        1000, ge=1, description="Images scanned (a seeded subset) to find neutral images; null = the whole dataset."
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="A cluster drives the channel when its Holm-adjusted one-sided paired p-value "
        "against Random is below alpha and its mean raise above Random reaches min_effect."
    )
    min_effect: float = Field(
        0.1, ge=0.0, description="Smallest mean raise above Random, as a fraction of the channel's top-1 activation, "
        "for a cluster to count as driving the channel."
    )
    same_cause: float = Field(
        0.8, ge=-1.0, le=1.0,
        description="Driving clusters whose insertions change the rest of the layer alike (cosine of the mean "
        "change vectors at the measured site >= this) count as one cause (n_causes).",
    )


class InterventionConfig(_Section):
    enabled: bool = Field(True, description="Run the patch-swap interventions.")
    protocols: list[Literal["replace", "insert"]] = Field(
        ["replace", "insert"], min_length=1,
        description="replace: a top site's patch swapped (paper 5.3); insert: cluster patches pasted into neutral "
        "images (causal polysemanticity).",
    )
    insert: InsertConfig = InsertConfig()
    layer: Optional[str] = Field(None, description="Layer to intervene on; null = the deepest analysed layer.")
    n_channels: int = Field(10, ge=1, description="Highest-index channels tested (status ok, k_hat >= 2).")
    sites_per_channel: int = Field(5, ge=1, description="Top sites (by rank) intervened on per channel.")
    fill: Literal["mean", "zero", "noise"] = Field(
        "mean", description="Ablate-elsewhere fill: mean = the model's normalisation mean colour, noise = uniform."
    )
    normalize: Literal["top1"] = Field("top1", description="Delta divided by the channel's top-1 activation.")
    region_scale: Optional[float] = Field(
        None, gt=0.0, le=1.0,
        description="Side of the replaced square as a fraction of the layer's crop (1 = the whole crop); "
        "null = the largest fraction at which every site of the layer leaves room for a non-overlapping square.",
    )
    blend_px: int = Field(0, ge=0, description="Feather width of pasted regions in pixels (0 = hard paste).")
    donor: Literal["matched", "random"] = Field(
        "matched",
        description="Donor patch of each pool: matched = the one whose activation (relative to its channel's "
        "top-1) is closest to the site's, so a swap is not biased by weaker donors; random = any.",
    )
    test_unit: Literal["site", "channel"] = Field(
        "site", description="Unit of the paired t-tests: (channel, site) pairs, or per-channel means of them."
    )
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Level of the reported confidence intervals.")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.", json_schema_extra=RUNTIME)
    seed: int = Field(0, description="Seed of donor, position and noise choices (per channel and site).")


class ReportConfig(_Section):
    k_values: list[int] = Field(
        [10, 20, 30, 40], description="K values of the K-sensitivity analysis (each must exceed stats.k_max)."
    )
    k_sensitivity_draws: Optional[int] = Field(
        None,
        ge=3,
        description="Null draws per component when re-scoring the top-k subsets; null = nulls.m. Fewer draws "
        "bound the cost; the mined K is then calibrated with as many of the run's draws as a control.",
    )
    high_psi_quantile: float = Field(
        0.95, gt=0.0, lt=1.0, description="High-PSI channels (K-hat histogram) beat this quantile of the null neurons."
    )
    gallery_channels: int = Field(3, ge=1, description="Channels in each of the high/low-PSI galleries.")
    gallery_patches: int = Field(8, ge=1, description="Patches shown per cluster in the gallery figures.")
    thumb_size: int = Field(64, ge=16, le=256, description="Side in pixels of the patch thumbnails (JPEG).")
    browser: bool = Field(True, description="Write the static neuron browser.")


class Config(_Section):
    run_name: str = Field("paper", pattern=r"^[A-Za-z0-9_.-]+$", description="Outputs go to results/<run_name>/.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available.", json_schema_extra=RUNTIME
    )
    data: DataConfig = DataConfig()
    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    mining: MiningConfig = MiningConfig()
    crops: CropConfig = CropConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    secondary_embedder: Optional[EmbedderConfig] = Field(
        None, description="Second text head for the D sensitivity analysis (paper Fig. 6)."
    )
    prompts: PromptConfig = PromptConfig()
    stats: StatsConfig = StatsConfig()
    nulls: NullConfig = NullConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    index: IndexConfig = IndexConfig()
    neuron_embeddings: NeuronEmbeddingConfig = NeuronEmbeddingConfig()
    validation: ValidationConfig = ValidationConfig()
    shards: ShardConfig = ShardConfig()
    interventions: InterventionConfig = InterventionConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        """Settings that do not fit each other, every one of them in one error."""
        bad = []
        if len(set(self.model.layers)) != len(self.model.layers):
            bad.append(f"model.layers has duplicates: {self.model.layers}")
        # crops.size is checked with the layer names (polypsi.layercheck), once they are known to exist
        unknown = [layer for layer in self.neuron_embeddings.module if layer not in self.model.layers]
        if unknown:
            raise ValueError(f"neuron_embeddings.module names {unknown}, not among model.layers {self.model.layers}")
        il = self.interventions.layer
        if il is not None and il not in self.model.layers:
            bad.append(f"interventions.layer '{il}' is not one of model.layers {self.model.layers}")
        over = [k for k in self.report.k_values if k > self.mining.topk]
        if over:
            fits = [k for k in self.report.k_values if k <= self.mining.topk] or [self.mining.topk]
            bad.append(
                f"report.k_values {self.report.k_values} has {over} above mining.topk ({self.mining.topk}): the "
                f"K-sensitivity analysis re-scores the top k of the mined sites, so each k must be at most "
                f"mining.topk; set report.k_values to e.g. {fits} or raise mining.topk to {max(over)}"
            )
        kd = self.report.k_sensitivity_draws
        if kd is not None and kd > self.nulls.m:
            bad.append(f"report.k_sensitivity_draws ({kd}) must not exceed nulls.m ({self.nulls.m})")
        if self.mining.topk < self.stats.k_max:
            bad.append(f"mining.topk ({self.mining.topk}) must be >= stats.k_max ({self.stats.k_max})")
        if self.shards.draws > self.nulls.m + 1:
            bad.append(f"shards.draws ({self.shards.draws}) exceeds the {self.nulls.m + 1} draws there are "
                       f"(the real data and nulls.m = {self.nulls.m} null draws); lower shards.draws")
        if bad:
            raise ValueError("\n  - ".join(bad))
        return self

    @property
    def intervention_layer(self) -> str:
        return self.interventions.layer or self.model.layers[-1]


def _is_runtime(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("runtime"))


def _runtime_keys() -> dict[str, tuple[str, ...]]:
    """Section -> its runtime keys (a top-level runtime key maps to ()), from the fields' RUNTIME marks."""
    out: dict[str, tuple[str, ...]] = {}
    for name, f in Config.model_fields.items():
        if _is_runtime(f):
            out[name] = ()
            continue
        sub = _model_class(f.annotation)
        keys = tuple(k for k, sf in sub.model_fields.items() if _is_runtime(sf)) if sub is not None else ()
        if keys:
            out[name] = keys
    return out


class Undeclared:
    """Stands for a config section a rule did not pass: reading it is an error, not a silent default."""

    def __init__(self, section: str):
        self._section = section

    def __getattr__(self, key: str):
        if key.startswith("__"):
            raise AttributeError(key)
        raise ConfigError(
            f"this stage reads `{self._section}.{key}`, but its rule does not pass `{self._section}` "
            "in params.config; add it to the rule's rule_config(...)"
        )

    def __repr__(self) -> str:
        return f"<undeclared config section {self._section}>"


def config_for_rule(declared: dict[str, Any], full: dict | None = None) -> Config:
    """The Config a rule's stage sees: the settings the rule declared, plus the run's runtime settings.

    `declared` is the rule's `params.config` (section -> its keys, all or some; top-level keys as
    values). Each section is validated on its own: the whole config was validated when the
    Snakefile loaded. Runtime settings (fields marked RUNTIME) come from `full`, the run's merged
    config, so changing them reruns nothing. Sections the rule did not declare raise on access.
    """
    built: dict[str, Any] = {k: Undeclared(k) for k in Config.model_fields}
    for name, value in declared.items():
        if name not in Config.model_fields:
            raise ConfigError(f"params.config has unknown section {name!r}")
        cls = _model_class(Config.model_fields[name].annotation)
        try:
            built[name] = cls.model_validate(value) if cls is not None and isinstance(value, dict) else value
        except ValidationError as err:
            raise ConfigError(_format_error(err, f"params.config[{name!r}]")) from None
    full = full or {}
    for section, keys in RUNTIME_KEYS.items():
        raw = full.get(section)
        if not keys:
            f = Config.model_fields[section]
            built[section] = TypeAdapter(f.annotation).validate_python(raw) if raw is not None else f.default
            continue
        target = built[section]
        if isinstance(target, Undeclared) or target is None or not isinstance(raw, dict):
            continue
        for k in keys:
            if k in raw:
                setattr(target, k, raw[k])  # validated on assignment
    return Config.model_construct(**built)


def rule_config(cfg: Config, *keys: str, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """A rule's `params.config`: the sections (`"nulls"`) and single keys (`"mining.topk"`) its stage reads.

    Runtime keys are left out (config_for_rule adds them from the run's config): a change to what
    is returned reruns the rule, a change to anything else does not. `without` names keys of a
    declared section that the stage does not read (e.g. `"interventions.confidence"`, read by the
    summary only): changing them does not rerun the rule, and the stage would see their defaults.
    """
    out: dict[str, Any] = {}
    for key in keys:
        section, _, sub = key.partition(".")
        value = getattr(cfg, section)
        if not hasattr(value, "model_dump"):  # a top-level key, or an optional section that is off (None)
            if RUNTIME_KEYS.get(section) != ():
                out[section] = value
            continue
        d = value.model_dump(mode="json")
        for k in RUNTIME_KEYS.get(section, ()):
            d.pop(k, None)
        if isinstance(value, EmbedderConfig):  # `auto` follows `device` (runtime): the rule sees what it means
            d["precision"] = value.resolved_precision(cfg.device)
        if sub:
            out.setdefault(section, {})[sub] = d[sub]
        else:
            out[section] = d
    for key in without:
        section, _, sub = key.partition(".")
        if not sub or sub not in out.get(section, {}):
            raise ConfigError(f"rule_config: `{key}` is not a key of a declared section")
        del out[section][sub]
    return out


def _model_class(annotation) -> Optional[type[BaseModel]]:
    """The config section class in a field's annotation (`X` or `Optional[X]`), if any."""
    for a in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_at(loc: tuple) -> Optional[type[BaseModel]]:
    """The pydantic class that owns the key at `loc` (for did-you-mean suggestions)."""
    cls: Any = Config
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        cls = _model_class(field.annotation)
        if cls is None:
            return None
    return cls


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            owner = _section_at(loc)
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), _known_keys(owner), n=1)
                if close:
                    prefix = ".".join(str(p) for p in loc[:-1])
                    hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
            lines.append(f"  - unknown key '{key}'{hint}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            if not loc:  # a check across sections: its message names the keys
                lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
                continue
            lines.append(f"  - key '{key}': {e['msg']}{got_s}")
    return "\n".join(lines)


def load_config(raw: dict | None, source: str = "config") -> Config:
    """Validate a plain dict (e.g. Snakemake's merged `config`) into a typed Config."""
    try:
        return Config.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config_file(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return load_config(raw, str(path))


# Images in Tiny-ImageNet's splits (the dataset is fixed).
TINY_IMAGENET_IMAGES = {"train": 100_000, "val": 10_000}


def planned_images(cfg: Config) -> Optional[int]:
    """How many images the run indexes, when that is known before any job runs (else None).

    Generated data and the planted world say so in their config, Tiny-ImageNet's splits have fixed
    sizes, and `data.max_images` bounds any dataset. An image folder is not counted when planning
    (every cluster job re-plans the run).
    """
    known = {
        "synthetic": cfg.data.synthetic.n_images,
        "world": cfg.world.n_images,
        "tiny_imagenet": TINY_IMAGENET_IMAGES[cfg.data.split],
    }.get(cfg.data.source)
    cap = cfg.data.max_images
    if known is None:
        return cap
    return known if cap is None else min(known, cap)


def fit_image_shards(cfg: Config) -> tuple[Config, Optional[str]]:
    """`cfg` with `shards.images` lowered so that each image shard holds at least `shards.min_images` images.

    Returns the config and a line saying what changed (None when nothing did). Results never depend on
    the sharding; a shard of a handful of images only costs a model load.
    """
    n = planned_images(cfg)
    if n is None:
        return cfg, None
    most = max(1, n // cfg.shards.min_images)
    if cfg.shards.images <= most:
        return cfg, None
    fitted = cfg.model_copy(update={"shards": cfg.shards.model_copy(update={"images": most})})
    note = (
        f"shards.images {cfg.shards.images} -> {most}: the run has {n} images and each image shard gets at "
        f"least shards.min_images = {cfg.shards.min_images} (lower shards.min_images to keep more shards)"
    )
    return fitted, note


RUNTIME_KEYS: dict[str, tuple[str, ...]] = _runtime_keys()


def json_schema() -> dict:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# The base of every run: the Snakefile loads it before any --configfile overlay.
BASE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


def _json(value: Any) -> str:
    return json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)


def keys_markdown(base: str | Path | None = BASE_CONFIG) -> str:
    """A table of every config key with the value a run gets and its description (pasted into the README).

    The value is the typed default with `base` merged in (config/config.yaml, which every run reads);
    where the two differ the table gives both. `base=None` (or a missing file) shows the typed defaults.
    """
    run = load_config_file(base) if base is not None and Path(base).exists() else Config()
    rows = ["| key | default (config/config.yaml merged in) | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], value: Any, prefix: str):
        for name, f in model.model_fields.items():
            sub = _model_class(f.annotation)
            key = f"{prefix}{name}"
            got = getattr(value, name)
            if sub is not None and f.default is not None:
                walk(sub, got, key + ".")
                continue
            typed = _json(f.default)
            cell = f"`{_json(got)}`"
            if _json(got) != typed:
                cell += f" (config.yaml; typed default `{typed}`)"
            desc = (f.description or "").replace("|", "\\|")
            if _is_runtime(f):
                desc += " *Runtime: reruns nothing; changes speed, and results by float rounding at most.*"
            rows.append(f"| `{key}` | {cell} | {desc} |")

    walk(Config, run, "")
    return "\n".join(rows)


if __name__ == "__main__":  # regenerate config/schema.json
    import sys

    from .io import atomic_path

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "config" / "schema.json"
    with atomic_path(out) as tmp:
        tmp.write_text(schema_text())
    print(f"wrote {out}")
