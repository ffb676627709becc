# Shared helpers: the typed config, the sources the run uses, output paths, each rule's settings and code version.
# Parsing stays cheap (no torch import): every cluster job re-parses the Snakefile.
import os
import sys
from pathlib import Path

# The checkout's root (this file is workflow/rules/common.smk). Not workflow.basedir: when polypsi is
# another workflow's `module:`, that is the outer workflow's folder.
POLYPSI_ROOT = Path(str(workflow.current_basedir)).parents[1]
sys.path.insert(0, str(POLYPSI_ROOT / "src"))  # run from a checkout without installing
# Jobs import it from there too (e.g. in the conda env of `--sdm conda`, which does not install polypsi).
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
if str(POLYPSI_ROOT / "src") not in _paths:
    os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(POLYPSI_ROOT / "src"), *_paths])))

from snakemake.utils import validate
from polypsi import sources
from polypsi.codehash import code_version
from polypsi.config import fit_image_shards, load_config, rule_config
from polypsi.errors import PolypsiError
from polypsi.layercheck import cache_dir
from polypsi.preflight import check, fetch_problems, local_problems
from polypsi.manifest import dataset_files_param, layout_of
from polypsi.resume import clear_stale_locks, record_owner

# A run killed with SIGKILL leaves its locks behind; the same command resumes it (polypsi.resume).
if getattr(workflow, "is_main_process", False):  # not in cluster jobs, which re-plan on other machines
    _cleared = clear_stale_locks()
    if _cleared:
        sys.stderr.write(f"polypsi: {_cleared}\n")


onstart:
    preflight_downloads()
    record_owner()


try:
    cfg = load_config(config, "merged --configfile / config/config.yaml")
    # No image shard of a handful of images (config.yaml's 8 shards suit the paper's 10,000 images).
    cfg, shards_note = fit_image_shards(cfg)
    if shards_note:
        sys.stderr.write(f"polypsi: {shards_note}\n")
    # The registry names every source the run uses; a plug-in registers its own (and its config sections).
    SOURCES_USED = {
        "dataset": [sources.get("dataset", cfg.data.source)],
        "model": [sources.get("model", cfg.model.source)],
        "embedder": [sources.get("embedder", e.source) for e in (cfg.embedder, cfg.secondary_embedder) if e],
        "vocabulary": [
            sources.get("vocabulary", spec)
            for spec in (cfg.prompts.concepts, cfg.prompts.templates, cfg.prompts.null_concepts)
            if spec in sources.names("vocabulary")
        ],
    }
    # The preflight (polypsi.preflight): every missing file and every setting that cannot work (data.root,
    # checkpoints, prompt lists, layer names, crop and shard sizes) stops the plan here, all listed at once,
    # in well under a second once the model's probe is cached. What jobs would download: preflight_downloads.
    check(local_problems(cfg, cache_dir()))
except PolypsiError as err:
    sys.stderr.write(f"\n{err}\n\n")
    sys.exit(1)
# The typed config coerces values (e.g. --config's strings); the schema checks what it produced.
validate(cfg.model_dump(mode="json"), str(POLYPSI_ROOT / "config" / "schema.json"), set_default=False)

DATASET = SOURCES_USED["dataset"][0]
R = f"results/{cfg.run_name}"
LAYERS = list(cfg.model.layers)
IMAGE_SHARDS = list(range(cfg.shards.images))
CHANNEL_SHARDS = list(range(cfg.shards.channels))
DRAW_SHARDS = list(range(cfg.shards.draws))
SCRIPTS = POLYPSI_ROOT / "workflow" / "scripts"
# The GPU resource of every job that may run on CUDA (models, embedders, batched scoring): with `device: auto` or
# `cuda` it declares gpu=1, so `--resources gpu=1` (profiles/workstation) never lets two of them share the GPU
# unannounced; with `device: cpu` none declares it (they then share the cores like any CPU job).
GPU = 0 if cfg.device == "cpu" else 1


wildcard_constraints:
    layer="|".join(LAYERS),
    shard=r"\d+",
    cshard=r"\d+",
    dshard=r"\d+",


def settings(*keys, kinds=(), without=()):
    """A rule's `params.config`: the config sections and keys its stage reads, as plain data.

    `keys` are sections ("nulls") or single keys ("mining.topk"); `kinds` adds the sections that
    the run's sources of those kinds read (e.g. `world` for the planted world's model). A change
    to these reruns the rule; a change elsewhere does not. Runtime settings (fields marked
    runtime: device, batch sizes, memory layout) change speed, not results: they are left out
    here and reach the stage from the run's config. `without`: keys of a listed section the stage
    does not read (see polypsi.config.rule_config).
    """
    extra = [s for kind in kinds for src in SOURCES_USED[kind] for s in src.sections]
    return rule_config(cfg, *keys, *dict.fromkeys(extra), without=without)


def code(name):
    """Code version of a rule: editing any module its script runs reruns the rule."""
    return code_version(SCRIPTS / f"{name}.py", SOURCES_USED)


def asset_inputs(*kinds, embedder=None):
    """Local files that results depend on besides the workflow's own outputs, as named inputs.

    Replacing a checkpoint, your own model's file or a prompt list (even in place) then reruns the
    rules that read it: Snakemake reruns a job whose input is newer than its output.
    kinds: "model", "embedder" (`embedder` = that section, default cfg.embedder), "prompts".
    """
    files = {}
    if "model" in kinds:
        if cfg.model.checkpoint:
            files["model_checkpoint"] = cfg.model.checkpoint
        where = (cfg.model.entry or "").rpartition(":")[0]
        if cfg.model.source == "python" and where.endswith(".py"):
            files["model_entry"] = where
    if "embedder" in kinds:
        emb = embedder or cfg.embedder
        if emb.checkpoint:
            files["embedder_checkpoint"] = emb.checkpoint
    if "prompts" in kinds:
        registered = sources.names("vocabulary")
        for key in ("concepts", "templates", "null_concepts"):
            spec = getattr(cfg.prompts, key)
            if spec in registered:
                continue
            if spec.startswith("builtin:"):
                spec = str(POLYPSI_ROOT / "src" / "polypsi" / "data" / spec.removeprefix("builtin:"))
            files[f"prompts_{key}"] = spec
    return files


def script_path(name):
    return str(SCRIPTS / f"{name}.py")


def images_source():
    if DATASET.render:
        return {"images": f"{R}/world/images"}
    if cfg.data.source == "tiny_imagenet":
        return {"wnids": f"{cfg.data.root}/wnids.txt"}
    return {}


def dataset_files(wildcards):
    """index_dataset's `files` param: the digest of the manifest of data.root (polypsi.manifest).

    Adding, removing or replacing an image then reruns index_dataset and everything after it. A
    function, so the walk happens only when index_dataset is planned or runs, never in other jobs.
    Generated images are the workflow's own output (their renderer's settings rerun it).
    """
    if DATASET.render:
        return "generated by render_images"
    return dataset_files_param(cfg.data.root, layout_of(DATASET.target))


def preflight_downloads():
    """The preflight's second half when a run starts (not for dry runs): pretrained weights and data that the
    rules about to run would download, refused when they are neither cached here nor reachable."""
    rules = {job.rule.name for job in workflow.dag.needrun_jobs()}
    try:
        check(fetch_problems(cfg, cache_dir()), rules)
    except PolypsiError as err:
        sys.stderr.write(f"\n{err}\n\n")
        raise SystemExit(1)


def all_outputs():
    outs = [f"{R}/report/auroc.csv"]
    outs += expand(f"{R}/{{kind}}/{{layer}}.parquet", kind=["psi", "null_psi", "patches", "clusters"], layer=LAYERS)
    outs += extra_outputs
    return outs


# Other rule files append the final outputs they add to the `all` target here.
extra_outputs = []
# A plug-in that knows what its units are (the planted world) writes a truth table here
# (columns layer, channel, kind: mono | poly | dead, concepts ';'-joined) and sets this list.
UNIT_TRUTH = []
OR_UNITS = cfg.validation.or_units
# The insertion protocol's per-channel causal table and its trials, when the run has them (browser input).
CAUSAL_TABLE, CAUSAL_TRIALS = (
    (
        [f"{R}/interventions/{cfg.intervention_layer}_causal.parquet"],
        [f"{R}/interventions/{cfg.intervention_layer}.parquet"],
    )
    if cfg.interventions.enabled and "insert" in cfg.interventions.protocols
    else ([], [])
)


# Report helpers (functions live here: the catalog's linter wants rules and functions in separate files).
CAPTIONS = str(POLYPSI_ROOT / "workflow" / "report")


def caption(name):
    """The report caption (workflow/report/<name>.rst) of a figure or table."""
    return f"{CAPTIONS}/{name}.rst"


def secondary_settings(*keys, kinds=()):
    """settings() with the `embedder` section replaced by `secondary_embedder` (text-head sensitivity)."""
    out = settings(*keys, kinds=kinds)
    out["embedder"] = rule_config(cfg, "secondary_embedder")["secondary_embedder"]
    return out
