"""Preflight: every missing asset and every setting that cannot work, listed at once, before any job runs.

Checks the data (data.root and its layout), the model (its checkpoint or your own model's file,
its pretrained weights, the analysed layers against the model built without weights, crop sizes,
channel shards, feature-map sizes), each embedder (checkpoint, architecture, pretrained weights)
and the prompt lists, and raises one `PreflightError` that names each problem's key or file and
how to fix it.

Two tiers:
- `local_problems`: files on this machine and settings (cheap: stats, a few header bytes, the
  cached model probe). The workflow runs them whenever it plans, dry runs included.
- `fetch_problems`: what a job would download (torchvision, timm and open_clip pretrained
  weights, Tiny-ImageNet): refused when it is neither in its local cache nor reachable. The
  workflow runs them when a run starts (onstart: not for dry runs, nor when nothing is to be
  done), for the rules that will run; the first time a tag is looked up costs importing its
  library, after that the answer is cached with the model probes.

`make check` (or `python -m polypsi.preflight --configfile ...`) runs both, and counts the
images of an image folder.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.util
import json
import os
import socket
import struct
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, NamedTuple
from urllib.parse import urlparse

import yaml

from . import layercheck, sources
from .config import BASE_CONFIG, Config, EmbedderConfig, load_config, planned_images
from .errors import ConfigError, PolypsiError, PreflightError
from .manifest import dataset_manifest, hidden, is_image_name, layout_of

PACKAGE_DATA = Path(__file__).parent / "data"
# Part of the cache key of looked-up pretrained tags: bump it when what a lookup records changes.
LOOKUP_VERSION = 1
MODEL_RULES = frozenset({"geometry", "mine_topk", "interventions"})
EMBEDDER_RULES = frozenset({"embed_patches", "embed_prompts", "interventions"})
SECONDARY_RULES = frozenset({"embed_patches_secondary", "embed_prompts_secondary"})
DATA_RULES = frozenset({"download_tiny_imagenet", "index_dataset"})


class Problem(NamedTuple):
    key: str  # the config key (or file) at fault
    message: str  # what is wrong and how to fix it
    rules: frozenset[str] = frozenset()  # the rules that need it (empty: every run)


# ---------------------------------------------------------------- files


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a weights file cannot be loaded, from its size and first bytes (None when it looks loadable).

    torch.save writes a zip archive (its central directory, at the end, shows truncation), older
    torch a pickle; safetensors files start with their header's length. Nothing is unpickled.
    """
    p = Path(path)
    if not p.is_file():
        return f"{p} does not exist"
    size = p.stat().st_size
    if size == 0:
        return f"{p} is empty (0 bytes)"
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix == ".safetensors":
        n = struct.unpack("<Q", head.ljust(8, b"\0"))[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            return f"{p} is not a readable safetensors file (truncated or corrupt header)"
        return None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{p} is a truncated or corrupt torch checkpoint ({e})"
        return None
    if head[:1] == b"\x80":  # a pickle (torch's legacy format)
        return None
    return f"{p} is not a torch checkpoint (neither torch.save's zip archive nor a pickle nor safetensors)"


def list_file(spec: str) -> Path:
    """The file of a prompt list spec (`builtin:<name>` is shipped with polypsi)."""
    return PACKAGE_DATA / spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec)


def prompt_problems(cfg: Config) -> list[Problem]:
    out, rules = [], frozenset({"embed_prompts", "embed_prompts_secondary"})
    vocabularies = sources.names("vocabulary")
    for key in ("concepts", "templates", "null_concepts"):
        spec = getattr(cfg.prompts, key)
        if spec in vocabularies:
            continue
        path = list_file(spec)
        if not path.is_file():
            out.append(Problem(f"prompts.{key}", f"prompts.{key}: the list {spec} ({path}) does not exist; write "
                               f"the file (one entry a line) or point prompts.{key} to it", rules))
            continue
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            out.append(Problem(f"prompts.{key}", f"prompts.{key}: {path} cannot be read as text ({e})", rules))
            continue
        items = [x for x in lines if x and not x.startswith("#")]
        if not items:
            out.append(Problem(f"prompts.{key}", f"prompts.{key}: {path} is empty (no line but blanks and "
                               "# comments); add one entry a line", rules))
        elif key == "templates":
            bad = [t for t in items if t.count("{}") != 1]
            if bad:
                out.append(Problem("prompts.templates", f"prompts.templates: every template in {path} needs "
                                   f"exactly one '{{}}' (where the concept goes); these do not: {bad[:5]}", rules))
    return out


# ---------------------------------------------------------------- data


def data_problems(cfg: Config, count_images: bool = False) -> tuple[list[Problem], int | None]:
    """Problems of data.root for the run's dataset source, and the number of images when counted."""
    d, src = cfg.data, sources.get("dataset", cfg.data.source)
    if src.render:
        return [], None
    root, rules = Path(d.root), DATA_RULES
    if d.source == "tiny_imagenet":
        if not (root / "wnids.txt").is_file():
            if not d.download:
                return [Problem("data.root", f"data.root: Tiny-ImageNet is not at {root} (no wnids.txt) and "
                                "data.download is false; unzip tiny-imagenet-200.zip so that "
                                f"{root}/wnids.txt exists, or set data.root to where it is", rules)], None
            return [], None  # a download: fetch_problems
        missing = [root / "words.txt"]
        missing.append(root / "val" / "val_annotations.txt" if d.split == "val" else root / "train")
        gone = [str(p) for p in missing if not p.exists()]
        if gone:
            return [Problem("data.root", f"data.root: {root} is not a complete Tiny-ImageNet folder ({', '.join(gone)} "
                            "missing); extract the whole archive there", rules)], None
        return [], None
    if not root.is_dir():
        return [Problem("data.root", f"data.root: {root} does not exist; set data.root to your image folder "
                        "(<class name>/<image files>)", rules)], None
    if layout_of(src.target) != "imagefolder":
        return [], None
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not hidden(e.name))
    if not classes:
        return [Problem("data.root", f"data.root: {root} has no class folders; put each class's images in "
                        f"{root}/<class name>/", rules)], None
    if count_images:
        n = sum(1 for rel, size, _ in dataset_manifest(root, "imagefolder") if size >= 0)
    else:  # stop at the first image
        n = next((1 for c in classes for e in os.scandir(root / c) if is_image_name(e.name) and e.is_file()), 0)
    if n == 0:
        return [Problem("data.root", f"data.root: the class folders of {root} hold no images (.jpg, .png, ...); "
                        "put the images in <class name>/ folders directly under it", rules)], None
    return [], (n if count_images else None)


def topk_problems(cfg: Config, n_images: int | None) -> list[Problem]:
    """mining.topk above the number of images, when each image gives a channel one site at most."""
    n = planned_images(cfg) if n_images is None else n_images
    if cfg.data.max_images is not None and n is not None:
        n = min(n, cfg.data.max_images)
    if n is None or not cfg.mining.one_site_per_image or n >= cfg.mining.topk:
        return []
    # the same words as polypsi.mining.too_few_images, which mine_topk raises (that module needs torch)
    return [Problem("mining.topk", f"mining.topk ({cfg.mining.topk}) is more than the {n} images of the run: "
                    "with mining.one_site_per_image each image gives a channel one site at most, so no channel "
                    f"would have K sites; set mining.topk to at most {n}, add images, or set "
                    "mining.one_site_per_image: false", frozenset({"mine_topk"}))]


# ---------------------------------------------------------------- model and embedders (local files)


def model_file_problems(cfg: Config) -> list[Problem]:
    m, out = cfg.model, []
    if m.checkpoint:
        why = checkpoint_problem(m.checkpoint)
        if why:
            out.append(Problem("model.checkpoint", f"model.checkpoint: {why}; save the weights with "
                               "torch.save(model.state_dict(), path) and point model.checkpoint to that file",
                               MODEL_RULES))
    where = (m.entry or "").rpartition(":")[0]
    if m.source == "python" and (where.endswith(".py") or "/" in where) and not Path(where).expanduser().is_file():
        out.append(Problem("model.entry", f"model.entry: the file {where} does not exist (paths are relative to "
                           "the folder you run snakemake in)", MODEL_RULES))
    return out


def embedders(cfg: Config) -> list[tuple[str, EmbedderConfig, frozenset[str]]]:
    out = [("embedder", cfg.embedder, EMBEDDER_RULES)]
    if cfg.secondary_embedder is not None:
        out.append(("secondary_embedder", cfg.secondary_embedder, SECONDARY_RULES))
    return out


def embedder_file_problems(cfg: Config) -> list[Problem]:
    out = []
    for section, emb, rules in embedders(cfg):
        if emb.checkpoint:
            why = checkpoint_problem(emb.checkpoint)
            if why:
                out.append(Problem(f"{section}.checkpoint", f"{section}.checkpoint: {why}; point it to an open_clip "
                                   "checkpoint file (.pt, .bin or .safetensors)", rules))
    return out


def layer_problems(cfg: Config, cache_dir: str | Path | None) -> list[Problem]:
    """Layer names, crop sizes, channel shards and feature-map sizes against the model built without weights."""
    try:  # a cache miss builds the model (torch)
        return [Problem(msg.split(":")[0].split(" ")[0], msg) for msg in layercheck.layer_problems(cfg, cache_dir)]
    except PolypsiError as e:
        return [Problem("model", f"the model cannot be built: {e}", MODEL_RULES)]
    except Exception as e:  # your own model's code, a missing library: say which and why
        return [Problem("model", f"the model cannot be built ({type(e).__name__}: {str(e)[:300]})", MODEL_RULES)]


def local_problems(cfg: Config, cache_dir: str | Path | None = None, *, layers: bool = True,
                   count_images: bool = False) -> list[Problem]:
    """Everything on this machine: data, files, prompt lists, layer names and sizes (layers=False skips the probe)."""
    data, n = data_problems(cfg, count_images)
    out = data + topk_problems(cfg, n) + model_file_problems(cfg) + embedder_file_problems(cfg)
    out += prompt_problems(cfg)
    if layers and not any(p.key == "model.entry" for p in out):
        out += layer_problems(cfg, cache_dir)
    return out


# ---------------------------------------------------------------- what jobs would download


def host_answers(url_or_host: str) -> bool:
    """Whether a download host's name resolves (no network: a second, not minutes of retries)."""
    host = urlparse(url_or_host).hostname if "://" in url_or_host else url_or_host
    if not host or os.environ.get("HF_HUB_OFFLINE") == "1" and "huggingface" in host:
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _lookup_torchvision(name: str, tag: str) -> dict:
    import torchvision  # lazy: only a cache miss looks the tag up

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        return {"error": f"model.name '{name}' is not a torchvision model"}
    if tag not in enum.__members__:
        return {"error": f"model.weights '{tag}' is not one of {enum.__name__}: {', '.join(enum.__members__)}"}
    return {"url": enum[tag].url}


def _lookup_timm(name: str, tag: str) -> dict:
    import timm  # lazy: only a cache miss looks the tag up
    from timm.models import get_pretrained_cfg, split_model_name_tag  # lazy: as above

    arch, own = split_model_name_tag(name)
    if arch not in timm.list_models():
        return {"error": f"model.name '{arch}' is not a timm architecture"}
    full = f"{arch}.{own if tag == 'default' else tag}" if (own or tag != "default") else arch
    try:
        pcfg = get_pretrained_cfg(full)
    except RuntimeError:
        pcfg = None
    if pcfg is None:
        return {"error": f"model.weights '{tag}' is not a timm pretrained tag of '{arch}'"}
    if pcfg.hf_hub_id:
        return {"hub": pcfg.hf_hub_id, "files": [pcfg.hf_hub_filename] if pcfg.hf_hub_filename
                else ["model.safetensors", "pytorch_model.bin"]}
    return {"url": pcfg.url} if pcfg.url else {"error": f"timm names no source for the weights {full}"}


def open_clip_names() -> set[str] | None:
    """open_clip's architecture names without importing it (its model_configs/*.json and polypsi's own)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    folders = [Path(spec.origin).parent / "model_configs", PACKAGE_DATA / "open_clip"]
    return {p.stem for folder in folders for p in folder.glob("*.json")}


def _lookup_open_clip(name: str, tag: str | None) -> dict:
    import open_clip  # lazy: several seconds to import; only a cache miss looks the tag up

    open_clip.add_model_config(PACKAGE_DATA / "open_clip")
    if name not in open_clip.list_models():
        return {"error": f"'{name}' is not an open_clip architecture"}
    if tag is None:
        return {}
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        return {"error": f"'{tag}' is not a pretrained tag of '{name}'; known: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}"}
    hub, url = pcfg.get("hf_hub", ""), pcfg.get("url", "")
    if hub:
        repo, fname = os.path.split(hub)
        return {"hub": repo, "files": [fname] if fname else ["open_clip_model.safetensors",
                                                                "open_clip_pytorch_model.bin"]}
    return {"url": url, "cache": str(Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url))}


LOOKUPS = {"torchvision": (_lookup_torchvision, "torchvision"), "timm": (_lookup_timm, "timm"),
           "open_clip": (_lookup_open_clip, "open_clip_torch")}


def lookup_key(library: str, name: str, tag: str | None) -> str:
    """The cache key of a lookup: the library's installed version is part of it."""
    dist = LOOKUPS[library][1]
    return hashlib.sha1(json.dumps([LOOKUP_VERSION, library, _version(dist), name, tag]).encode()).hexdigest()[:16]


def lookup(library: str, name: str, tag: str | None, cache_dir: str | Path | None) -> dict:
    """Where `library` keeps the weights of (name, tag): {"url"} | {"hub", "files"} | {"error"}; cached."""
    path = Path(cache_dir) / f"weights-{lookup_key(library, name, tag)}.json" if cache_dir is not None else None
    return layercheck.cached_json(path, lambda: LOOKUPS[library][0](name, tag))


def _local_copy(found: dict) -> tuple[str | None, str, str]:
    """(a local file of looked-up weights or None, where they come from, the download host)."""
    if "hub" in found:
        from huggingface_hub import constants, try_to_load_from_cache  # lazy: only hub-hosted weights

        for f in found["files"]:
            got = try_to_load_from_cache(found["hub"], f)
            if isinstance(got, str) and os.path.isfile(got):
                return got, "", ""
        where = f"{found['hub']}/{found['files'][-1]} (Hugging Face cache: {constants.HF_HUB_CACHE})"
        return None, where, "huggingface.co"
    url = found["url"]
    cached = Path(found["cache"]) if "cache" in found else _torch_hub_dir() / "checkpoints" / Path(url).name
    return (str(cached) if cached.is_file() else None), f"{url} -> {cached}", url


def weights_problems(cfg: Config, cache_dir: str | Path | None) -> list[Problem]:
    out, m = [], cfg.model
    if m.source in ("torchvision", "timm") and m.weights and not m.checkpoint:
        found = lookup(m.source, m.name, m.weights, cache_dir)
        if "error" in found:
            out.append(Problem("model.weights", f"{found['error']}; fix model.name / model.weights", MODEL_RULES))
        else:
            local, where, host = _local_copy(found)
            if local is None and not host_answers(host):
                out.append(Problem("model.weights", f"model.weights: {m.source} weights {m.name} {m.weights} are not "
                                   f"on this machine and {urlparse(host).hostname or host} cannot be reached. Fetch "
                                   f"{where} on a connected machine, or set model.checkpoint to a local state_dict",
                                   MODEL_RULES))
    for section, emb, rules in embedders(cfg):
        if emb.source != "open_clip":
            continue
        if emb.checkpoint or emb.pretrained is None:  # no tag to look up: the architecture's name, from files
            names = open_clip_names()
            if names is not None and emb.name not in names and not emb.name.startswith("hf-hub:"):
                close = difflib.get_close_matches(emb.name, sorted(names), n=3)
                out.append(Problem(f"{section}.name", f"{section}.name: '{emb.name}' is not an open_clip "
                                   f"architecture" + (f"; close names: {close}" if close else ""), rules))
            continue
        found = lookup("open_clip", emb.name, emb.pretrained, cache_dir)
        if "error" in found:
            key = f"{section}.pretrained" if "pretrained tag" in found["error"] else f"{section}.name"
            out.append(Problem(key, f"{key}: {found['error']}", rules))
        elif "url" in found or "hub" in found:
            local, where, host = _local_copy(found)
            if local is None and not host_answers(host):
                out.append(Problem(f"{section}.pretrained", f"{section}.pretrained: open_clip weights {emb.name}/"
                                   f"{emb.pretrained} are not on this machine and {urlparse(host).hostname or host} "
                                   f"cannot be reached. Fetch {where} on a connected machine, then set "
                                   f"{section}.checkpoint to the file's path (or put it in that cache)", rules))
    return out


def download_problems(cfg: Config) -> list[Problem]:
    d = cfg.data
    if d.source != "tiny_imagenet" or not d.download or (Path(d.root) / "wnids.txt").is_file():
        return []
    url = urlparse(d.url)
    ok = Path(url.path).is_file() if url.scheme == "file" else host_answers(d.url)
    if ok:
        return []
    return [Problem("data.root", f"data.root: Tiny-ImageNet is not at {d.root} and {d.url} cannot be reached; "
                    f"download it on a connected machine and unzip it so that {d.root}/wnids.txt exists (or set "
                    "data.root to where it is)", DATA_RULES)]


def fetch_problems(cfg: Config, cache_dir: str | Path | None = None) -> list[Problem]:
    """What jobs would download and cannot: pretrained weights and Tiny-ImageNet."""
    return weights_problems(cfg, cache_dir) + download_problems(cfg)


# ---------------------------------------------------------------- all at once


def report(problems: Iterable[Problem]) -> str:
    problems = list(problems)
    lines = [f"preflight: {len(problems)} problem(s) with this run; fix them all, then run again:"]
    for p in problems:
        lines.append("  - " + p.message.replace("\n", "\n    "))
    return "\n".join(lines)


def check(problems: Iterable[Problem], rules: Iterable[str] | None = None) -> None:
    """Raise one PreflightError listing the problems (only those of `rules` when given)."""
    wanted = None if rules is None else set(rules)
    problems = [p for p in problems if wanted is None or not p.rules or p.rules & wanted]
    if problems:
        raise PreflightError(report(problems), problems)


def preflight(cfg: Config, cache_dir: str | Path | None = None, count_images: bool = True) -> list[Problem]:
    """Every problem of the run: local files and settings, then what jobs would download."""
    return local_problems(cfg, cache_dir, count_images=count_images) + fetch_problems(cfg, cache_dir)


def _deep_update(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _deep_update(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def merged_config(configfiles: list[str]) -> dict:
    """config/config.yaml with each file merged over it, as `snakemake --configfile ...` does."""
    raw: dict = {}
    for path in [BASE_CONFIG, *configfiles]:
        try:
            raw = _deep_update(raw, yaml.safe_load(Path(path).read_text()) or {})
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polypsi.preflight", description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="overlays merged over config/config.yaml")
    ap.add_argument("--directory", help="the folder snakemake runs in (relative paths start there)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    files = [str(Path(f).resolve()) for f in args.configfile]
    if args.directory:
        os.chdir(args.directory)
    try:
        cfg = load_config(merged_config(files), " + ".join(["config/config.yaml", *args.configfile]))
        check(preflight(cfg, layercheck.cache_dir()))
    except PolypsiError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    print(f"preflight: no problem found ({cfg.run_name}: data {cfg.data.source}, model {cfg.model.source} "
          f"{cfg.model.name}, layers {cfg.model.layers}; {time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
