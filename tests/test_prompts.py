import pytest

from polypsi.config import load_config
from polypsi.errors import ConfigError
from polypsi.prompts import prompt_table, read_list


def test_paper_prompt_count_is_1602():
    # 200 class names + 67 generic concepts, 6 templates each (paper, section 4)
    cfg = load_config({})
    classes = [f"class {i}" for i in range(200)]
    df = prompt_table(cfg, classes)
    main = df[df["set"] == "main"]
    assert len(read_list("builtin:generic_concepts.txt")) == 67
    assert main["concept"].nunique() == 267 and len(main) == 1602
    assert main["template"].nunique() == 6
    null = df[df["set"] == "null"]
    assert len(null) > 0 and not set(null["concept"]) & set(main["concept"])
    assert (main.groupby("concept")["concept_id"].nunique() == 1).all()


def test_duplicates_between_classes_and_concepts_are_merged():
    cfg = load_config({})
    df = prompt_table(cfg, ["Wheel", "goldfish"])
    assert df[(df["set"] == "main")]["concept"].str.lower().value_counts().max() == 6


def test_bad_lists(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of {} and {}\n")
    with pytest.raises(ValueError, match="exactly one"):
        prompt_table(load_config({"prompts": {"templates": str(bad)}}), [])
    with pytest.raises(ConfigError, match="prompts.concepts"):
        prompt_table(load_config({"prompts": {"concepts": str(tmp_path / "none.txt")}}), [])


def test_folder_style_class_names_are_spelled_out():
    df = prompt_table(load_config({}), ["fire_salamander"])
    assert "a photo of a fire salamander." in set(df["prompt"])
