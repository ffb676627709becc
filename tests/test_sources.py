"""The source registry: built-in sources, the planted world as a plug-in, clear errors for unknown names."""

import pytest

from polypsi import sources
from polypsi.config import json_schema, load_config
from polypsi.errors import ConfigError, PolypsiError, SourceError


@pytest.mark.parametrize("kind,section", [("model", "ModelConfig"), ("embedder", "EmbedderConfig"),
                                          ("dataset", "DataConfig")])
def test_the_config_accepts_exactly_the_registered_sources(kind, section):
    schema = json_schema()["$defs"][section]["properties"]["source"]
    assert schema["enum"] == sources.names(kind)
    key = {"dataset": "data"}.get(kind, kind)
    with pytest.raises(ConfigError, match=f"'nope' is not a registered {kind} source; known: "):
        load_config({key: {"source": "nope"}})


def test_the_planted_world_registers_itself_through_an_entry_point():
    assert sources.plugins().get("world") == "polypsi.world.plugin"
    for kind in ("dataset", "model", "embedder", "vocabulary"):
        src = sources.get(kind, "world")
        assert src.sections == ("world",) and all(m.startswith("polypsi.") for m in src.modules)
    assert sources.get("dataset", "world").rendered == ("world.json",)


def test_targets_resolve_to_callables():
    for kind in sources.KINDS:
        for name in sources.names(kind):
            src = sources.get(kind, name)
            assert callable(src.load()), (kind, name)
            if src.render:
                assert callable(src.load("render")), (kind, name)


def test_unknown_source_names_the_known_ones_and_a_close_match():
    with pytest.raises(SourceError, match=r"model source 'torchvison' is not registered.*torchvision.*did you mean"):
        sources.get("model", "torchvison")
    assert issubclass(SourceError, PolypsiError)


def test_a_source_cannot_be_registered_twice_with_another_target():
    src = sources.Source("model", "test-twice", "polypsi.models:build_torchvision")
    try:
        sources.register(src)
        sources.register(src)  # the same registration again is harmless
        with pytest.raises(ValueError, match="registered twice"):
            sources.register(sources.Source("model", "test-twice", "polypsi.models:build_model"))
        with pytest.raises(ValueError, match="unknown source kind"):
            sources.register(sources.Source("tokenizer", "x", "a:b"))
    finally:
        sources._REGISTRY.pop(("model", "test-twice"), None)


def test_registering_costs_no_heavy_import():
    import subprocess
    import sys

    code = ("import sys; from polypsi import sources; sources.names('model'); "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_a_checkout_without_installation_finds_the_world_in_pyproject(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(sources, "distribution", not_installed)
    monkeypatch.setattr(sources, "entry_points", lambda group: [])
    assert sources.plugins() == {"world": "polypsi.world.plugin"}
