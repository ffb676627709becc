import json
from pathlib import Path

import pytest
import yaml

from polypsi.layercheck import check_crop_sizes
from polypsi.config import (RUNTIME_KEYS, ConfigError, Undeclared, config_for_rule, load_config,
                            load_config_file, rule_config, schema_text)

ROOT = Path(__file__).resolve().parents[1]


def test_schema_file_is_in_sync():
    assert (ROOT / "config" / "schema.json").read_text() == schema_text(), "run `make schema`"


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml", "demo.yaml"])
def test_shipped_configs_validate_over_the_defaults(name):
    path = ROOT / "config" / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    over = yaml.safe_load(path.read_text())

    def merge(a, b):  # Snakemake's --configfile merge: nested dicts updated, others replaced
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    cfg = load_config(merge(base, over), name)
    assert cfg.run_name


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config({"mining": {"topkk": 3}})
    assert "mining.topkk" in str(e.value) and "did you mean 'mining.topk'" in str(e.value)


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError) as e:
        load_config({"nulls": {"m": "twenty"}})
    assert "nulls.m" in str(e.value) and "twenty" in str(e.value)


def test_cross_checks():
    with pytest.raises(ConfigError, match="crops.size has no entry"):
        check_crop_sizes(load_config({"model": {"layers": ["layer2"]}}))
    with pytest.raises(ConfigError, match="k_max"):
        load_config({"stats": {"k_min": 4, "k_max": 3}})
    with pytest.raises(ConfigError, match="interventions.layer"):
        load_config({"interventions": {"layer": "layer1"}})


def test_schema_rejects_unknown_keys_like_pydantic():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_text())
    jsonschema.validate({"mining": {"topk": 5}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"mining": {"topkk": 5}}, schema)


def test_a_rule_sees_only_the_sections_it_declared():
    cfg = config_for_rule({"mining": {"topk": 7}}, {"device": "cpu"})
    assert cfg.mining.topk == 7 and cfg.device == "cpu"
    assert isinstance(cfg.nulls, Undeclared)
    with pytest.raises(ConfigError, match="reads `nulls.m`.*does not pass `nulls`"):
        cfg.nulls.m


def test_rule_config_holds_declared_keys_without_runtime_ones():
    cfg = load_config({"mining": {"topk": 12, "batch_size": 3}, "report": {"k_values": [6]}})
    got = rule_config(cfg, "mining", "nulls.m", "device", "run_name", "secondary_embedder")
    assert "secondary_embedder" in got and got["secondary_embedder"] is None
    assert got["mining"]["topk"] == 12 and "batch_size" not in got["mining"] and "channels_last" not in got["mining"]
    assert got["nulls"] == {"m": cfg.nulls.m} and "device" not in got and got["run_name"] == cfg.run_name


def test_embedder_precision_reaches_its_rules_resolved_from_the_device_setting():
    """auto follows `device` (a runtime key), never the hardware found: the rules rerun when it changes."""
    emb = {"source": "open_clip", "precision": "auto"}

    def precision(device, **over):
        cfg = load_config({"device": device, "embedder": {**emb, **over}, "secondary_embedder": {**emb, **over}})
        got = rule_config(cfg, "embedder", "secondary_embedder")
        assert got["embedder"]["precision"] == got["secondary_embedder"]["precision"]
        assert config_for_rule(got, {"device": device}).embedder.precision == got["embedder"]["precision"]
        return got["embedder"]["precision"]

    assert [precision(d) for d in ("cpu", "auto", "cuda")] == ["fp32", "fp32", "bf16"]
    assert precision("cuda", precision="fp32") == "fp32" and precision("cpu", precision="bf16") == "bf16"


def test_rule_config_can_leave_out_keys_a_stage_does_not_read():
    cfg = load_config({"interventions": {"confidence": 0.9}})
    got = rule_config(cfg, "interventions", without=("interventions.confidence", "interventions.test_unit"))
    assert "confidence" not in got["interventions"] and got["interventions"]["seed"] == cfg.interventions.seed
    with pytest.raises(ConfigError, match="not a key of a declared section"):
        rule_config(cfg, "nulls", without=("interventions.confidence",))


def test_runtime_keys_are_the_fields_marked_runtime():
    assert RUNTIME_KEYS == {"device": (), "mining": ("batch_size", "channels_last"), "embedder": ("batch_size",),
                            "secondary_embedder": ("batch_size",), "neuron_embeddings": ("batch_size",),
                            "interventions": ("batch_size",)}


def test_calibration_settings_are_their_own_section():
    cfg = load_config({"calibration": {"eps": 1e-3, "sd_tol": 0.0, "holdout_null_neurons": False}})
    assert cfg.calibration.eps == 1e-3 and not cfg.calibration.holdout_null_neurons
    with pytest.raises(ConfigError, match="unknown key 'nulls.eps'"):
        load_config({"nulls": {"eps": 1e-3}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mining: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)


def test_readme_documents_every_key():
    from polypsi.config import keys_markdown

    readme = (ROOT / "README.md").read_text()
    missing = [row for row in keys_markdown().splitlines()[2:] if row not in readme]
    assert not missing, "README key table is stale; paste polypsi.config.keys_markdown() output:\n" + "\n".join(missing)


def test_runtime_settings_come_from_the_full_config():
    # the run's raw config (as Snakemake holds it: --config values may be strings)
    full = {"device": "cpu", "mining": {"topk": 12, "batch_size": "3", "channels_last": False},
            "report": {"k_values": [6]}, "embedder": {"batch_size": 5}}
    cfg = config_for_rule({"mining": {"topk": 12}, "embedder": {"name": "x"}}, full)
    assert cfg.device == "cpu" and cfg.mining.batch_size == 3 and not cfg.mining.channels_last
    assert cfg.embedder.batch_size == 5 and cfg.mining.topk == 12 and cfg.embedder.name == "x"
    with pytest.raises(ValueError):
        config_for_rule({"mining": {"topk": 12}}, {"mining": {"batch_size": 0}})


def test_more_draw_shards_than_draws_is_refused_by_key():
    with pytest.raises(ConfigError, match=r"shards.draws \(8\) exceeds the 7 draws"):
        load_config({"nulls": {"m": 6}, "shards": {"draws": 8}})
    assert load_config({"nulls": {"m": 6}, "shards": {"draws": 7}}).shards.draws == 7


def test_key_table_shows_the_values_a_run_gets():
    from polypsi.config import keys_markdown

    run = keys_markdown()  # config/config.yaml merged in: every run reads it
    assert "| `shards.images` | `8` (config.yaml; typed default `1`) |" in run
    assert "| `mining.topk` | `50` |" in run  # the same in both: one value
    typed = keys_markdown(None)
    assert "| `shards.images` | `1` |" in typed and "config.yaml;" not in typed
    assert [r.split(" | ")[0] for r in run.splitlines()] == [r.split(" | ")[0] for r in typed.splitlines()]


def test_image_shards_fit_the_number_of_images():
    from polypsi.config import fit_image_shards, planned_images

    small = load_config({"data": {"source": "synthetic", "synthetic": {"n_images": 48}},
                         "shards": {"images": 8, "min_images": 16}})
    fitted, note = fit_image_shards(small)
    assert fitted.shards.images == 3 and small.shards.images == 8  # 48 // 16; the input is left alone
    assert "shards.images 8 -> 3" in note and "shards.min_images = 16" in note and "48 images" in note
    assert fit_image_shards(load_config({"shards": {"images": 8}}))[1] is None  # Tiny-ImageNet val: 10,000
    # by default a shard holds at least 256 images (a few mining batches per model load)
    assert fit_image_shards(load_config({"data": {"source": "synthetic", "synthetic": {"n_images": 600}},
                                         "shards": {"images": 8}}))[0].shards.images == 2
    assert planned_images(load_config({"data": {"source": "imagefolder"}})) is None  # not counted when planning
    folder, _ = fit_image_shards(
        load_config({"data": {"source": "imagefolder", "max_images": 40}, "shards": {"images": 8, "min_images": 10}})
    )
    assert folder.shards.images == 4
    tiny, _ = fit_image_shards(load_config({"data": {"source": "synthetic", "synthetic": {"n_images": 5}}}))
    assert tiny.shards.images == 1


def test_k_values_above_topk_are_rejected_naming_both_keys():
    with pytest.raises(ConfigError) as e:
        load_config({"mining": {"topk": 20}})  # the default report.k_values go up to 40
    msg = str(e.value)
    assert "report.k_values [10, 20, 30, 40]" in msg and "mining.topk (20)" in msg
    assert "[30, 40] above" in msg and "e.g. [10, 20]" in msg and "raise mining.topk to 40" in msg
    assert "<root>" not in msg
