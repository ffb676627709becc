"""The preflight: every missing asset and setting that cannot work, listed at once, each with its fix."""

import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from polypsi import preflight
from polypsi.config import load_config
from polypsi.errors import PreflightError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"model": {"source": "python", "entry": f"{ROOT / 'config' / 'examples' / 'my_model.py'}:build",
                   "weights": None, "layers": ["stage1", "stage2"]},
         "crops": {"size": {"stage1": 16, "stage2": 32}}, "mining": {"topk": 6}, "report": {"k_values": [6]},
         "embedder": {"name": "polypsi-tiny-vit", "pretrained": None}, "run_name": "t"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("probes")


def _images(root, classes=("a", "b"), n=2):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(root / c / f"{i}.png")
    return root


def test_checkpoint_files_are_judged_from_their_first_bytes(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    assert preflight.checkpoint_problem(good) is None
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:-40])
    (tmp_path / "text.pt").write_text("<html>not found</html>")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "bad.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    assert "truncated or corrupt" in preflight.checkpoint_problem(tmp_path / "cut.pt")
    assert "is not a torch checkpoint" in preflight.checkpoint_problem(tmp_path / "text.pt")
    assert "is empty" in preflight.checkpoint_problem(tmp_path / "empty.pt")
    assert "not a readable safetensors" in preflight.checkpoint_problem(tmp_path / "bad.safetensors")
    assert "does not exist" in preflight.checkpoint_problem(tmp_path / "absent.pt")


def test_every_problem_is_listed_at_once_by_the_command(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("POLYPSI_CACHE", str(cache))
    (tmp_path / "model.pt").write_bytes(b"PK\3\4 cut short")
    (tmp_path / "empty.txt").write_text("# nothing but a comment\n\n")
    (tmp_path / "templates.txt").write_text("a photo of {}\na photo\n")
    overlay = {**SMALL, "data": {"source": "imagefolder", "root": str(tmp_path / "absent")},
               "model": {**SMALL["model"], "checkpoint": str(tmp_path / "model.pt"), "layers": ["stage1", "stag2"]},
               "embedder": {**SMALL["embedder"], "checkpoint": str(tmp_path / "clip.pt")},
               "prompts": {"concepts": str(tmp_path / "empty.txt"), "templates": str(tmp_path / "templates.txt"),
                           "null_concepts": str(tmp_path / "gone.txt")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay))
    assert preflight.main(["--configfile", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert "preflight: 7 problem(s)" in err, err
    for words in ("data.root: ", "absent does not exist", "model.checkpoint: ", "truncated or corrupt",
                  "embedder.checkpoint: ", "clip.pt does not exist", "prompts.concepts: ", "is empty",
                  "prompts.templates: every template", "['a photo']", "prompts.null_concepts: ", "gone.txt",
                  "'stag2' is not a module of the model; close names: ['stage2'"):
        assert words in err, words
    # the same run, fixed, passes in well under a second (the model's probe is cached)
    _images(tmp_path / "imgs", n=3)
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({**SMALL, "data": {"source": "imagefolder",
                                                                        "root": str(tmp_path / "imgs")}}))
    assert preflight.main(["--configfile", str(tmp_path / "ok.yaml")]) == 0
    assert "no problem found" in capsys.readouterr().out


def _looked_up(cache, library, name, tag, found):
    """A lookup already in the cache (tests never import open_clip for it, nor reach a host)."""
    key = preflight.lookup_key(library, name, tag)
    (cache / f"weights-{key}.json").write_text(json.dumps(found))


def test_downloads_that_cannot_happen_are_refused_for_the_rules_that_need_them(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "host_answers", lambda _: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _looked_up(tmp_path, "torchvision", "resnet50", "IMAGENET1K_V1",
               {"url": "https://download.pytorch.org/models/resnet50-0676ba61.pth"})
    _looked_up(tmp_path, "open_clip", "ViT-B-32", "openai",
               {"url": "https://example.org/clip/vit32.pt", "cache": str(tmp_path / "clip" / "vit32.pt")})
    _looked_up(tmp_path, "open_clip", "ViT-B-32", "nope", {"error": "'nope' is not a pretrained tag of 'ViT-B-32'"})
    cfg = load_config({"data": {"root": str(tmp_path / "tiny"), "url": f"file://{tmp_path}/tiny.zip"}})
    found = preflight.fetch_problems(cfg, tmp_path)
    assert [p.key for p in found] == ["model.weights", "embedder.pretrained", "data.root"]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in found[0].message
    with pytest.raises(PreflightError) as e:
        preflight.check(found, rules={"embed_prompts"})  # a run that only re-embeds the prompts
    assert [p.key for p in e.value.problems] == ["embedder.pretrained"]
    preflight.check(found, rules={"report"})  # nothing to download for the report
    # in their caches, or a tag that does not exist
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(b"x")
    cfg = cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update={"pretrained": "nope"})})
    found = preflight.fetch_problems(cfg, tmp_path)
    assert [p.message for p in found][0] == "embedder.pretrained: 'nope' is not a pretrained tag of 'ViT-B-32'"


def test_a_misspelt_open_clip_architecture_is_found_without_importing_open_clip(tmp_path):
    cfg = load_config({**SMALL, "embedder": {"name": "ViT-B-23", "pretrained": None}})
    (p,) = preflight.fetch_problems(cfg.model_copy(update={"data": cfg.data.model_copy(update={"download": False})}))
    assert p.key == "embedder.name" and "close names: ['ViT-B-32'" in p.message


def test_a_complete_tiny_imagenet_folder_and_an_incomplete_one(tiny_imagenet):
    cfg = load_config({"data": {"root": str(tiny_imagenet)}})
    assert preflight.data_problems(cfg) == ([], None)
    (tiny_imagenet / "words.txt").unlink()
    (p,), _ = preflight.data_problems(cfg)
    assert "not a complete Tiny-ImageNet folder" in p.message and "words.txt" in p.message


def test_counted_images_against_mining_topk(tmp_path):
    cfg = load_config({**SMALL, "data": {"source": "imagefolder", "root": str(_images(tmp_path / "d", n=3))},
                       "mining": {"topk": 8, "one_site_per_image": True}, "report": {"k_values": [8]}})
    problems = preflight.local_problems(cfg, layers=False, count_images=True)
    assert [p.key for p in problems] == ["mining.topk"] and "the 6 images of the run" in problems[0].message
    assert not preflight.local_problems(cfg, layers=False)  # uncounted when planning: the mining rule refuses


def test_merged_config_follows_snakemake_overlays(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {layers: [layer4]}\nnulls: {m: 5}\n")
    (tmp_path / "b.yaml").write_text("nulls: {seed: 3}\n")
    raw = preflight.merged_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert raw["model"]["name"] == "resnet50" and raw["model"]["layers"] == ["layer4"]
    assert raw["nulls"] == {"m": 5, "seed": 3, "s_null": "gaussian", "d_null": "unrelated_prompts"}


def test_zip_checkpoint_with_a_broken_central_directory(tmp_path):
    with zipfile.ZipFile(tmp_path / "w.pt", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[:-10])
    assert "truncated or corrupt" in preflight.checkpoint_problem(tmp_path / "w.pt")
