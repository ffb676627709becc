"""Per-rule code versions: a rule reruns when a module its script runs changes, and only then."""

import shutil
from pathlib import Path

import pytest

from polypsi import codehash, sources

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


def used(model="torchvision", dataset="synthetic", embedder="open_clip", vocab=()):
    return {"model": [sources.get("model", model)], "dataset": [sources.get("dataset", dataset)],
            "embedder": [sources.get("embedder", embedder)], "vocabulary": [sources.get("vocabulary", v) for v in vocab]}


def mods(script, **kw):
    return set(codehash.rule_modules(SCRIPTS / f"{script}.py", used(**kw)))


def test_every_workflow_script_has_a_closure_with_its_stage():
    for script in SCRIPTS.glob("*.py"):
        m = codehash.rule_modules(script)
        assert "polypsi.job" in m, script.name


def test_interventions_do_not_depend_on_the_report_code():
    m = mods("interventions")
    assert "polypsi.interventions.run" in m and "polypsi.models" in m
    assert not {x for x in m if x.startswith("polypsi.report")}
    assert "polypsi.report.figures" in mods("report")


def test_sprites_do_not_depend_on_the_report_or_the_embedding_code():
    """The browser's costly image work reruns for its own code only: not for a figure, a page or the embedder."""
    m = mods("sprites", embedder="world", vocab=("world",))
    assert {"polypsi.report.sprites", "polypsi.report.thumbs", "polypsi.crops"} <= m
    assert not m & {"polypsi.report.figures", "polypsi.report.build", "polypsi.report.browser", "polypsi.croptable",
                    "polypsi.embedding"}
    assert not {x for x in m if x.startswith("polypsi.world")}


def test_table_rules_and_rendering_carry_their_own_code():
    assert "polypsi.topk" in mods("merge_topk")
    assert "polypsi.data" in mods("index_dataset")
    assert "polypsi.world.truth" in mods("ground_truth")


def test_plugin_modules_count_where_their_kind_is_loaded():
    world = dict(model="world", dataset="world", embedder="world", vocab=("world",))
    assert "polypsi.world.render" in mods("render_images", **world)
    assert not {x for x in mods("render_images") if x.startswith("polypsi.world")}
    assert "polypsi.world.model" in mods("mine_topk", **world)
    assert not {x for x in mods("mine_topk") if x.startswith("polypsi.world")}
    assert "polypsi.world.embedder" in mods("embed_prompts", **world)
    # scoring loads no source: a world edit does not re-score
    assert not {x for x in mods("score", **world) if x.startswith("polypsi.world")}


def test_editing_a_module_changes_exactly_the_rules_that_run_it(tmp_path, monkeypatch):
    pkg = tmp_path / "polypsi"
    shutil.copytree(codehash.ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    monkeypatch.setattr(codehash, "ROOT", pkg)
    rules = ["interventions", "report", "score", "mine_topk", "render_images"]
    world = used(model="world", dataset="world")

    def versions():
        return {r: codehash.code_version(SCRIPTS / f"{r}.py", world) for r in rules}

    before = versions()
    assert versions() == before
    with open(pkg / "report" / "figures.py", "a") as f:
        f.write("\n# edited\n")
    after = versions()
    assert {r for r in rules if after[r] != before[r]} == {"report"}
    with open(pkg / "world" / "render.py", "a") as f:
        f.write("\n# edited\n")
    again = versions()
    # the renderer runs in render_images, and in every rule that builds the world model (which imports it)
    assert {r for r in rules if again[r] != after[r]} == {"render_images", "mine_topk", "interventions"}


@pytest.mark.parametrize("name,expected", [("polypsi", "__init__.py"), ("polypsi.stats", "__init__.py"),
                                           ("polypsi.crops", "crops.py"), ("polypsi.nope", None), ("os", None)])
def test_module_file(name, expected):
    got = codehash.module_file(name)
    assert (got.name if got else None) == expected


_NESTED = '''
import a
def f():
    import b
    class C:
        def g(self):
            from c import d
    async def h():
        async with x:
            import e
        async for i in y:
            pass
        else:
            import f2
for i in z:
    import g
else:
    import h
while w:
    import i
else:
    import j
try:
    import k
except E:
    import l
else:
    import m
finally:
    import n
with v:
    import o
if u:
    import p
elif t:
    import q
else:
    import r
match s:
    case 1:
        import s2
    case _:
        from . import t2
try:
    pass
except* E:
    import u2
'''


def test_statements_find_every_import_that_a_full_walk_finds():
    """The statement walk behind imports_of against ast.walk: on every block kind, and on the package and scripts."""
    import ast

    def imports(nodes):
        return sorted(ast.dump(n) for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)))

    tree = ast.parse(_NESTED)
    assert imports(codehash.statements(tree.body)) == imports(ast.walk(tree)) and len(imports(ast.walk(tree))) == 20
    files = [*codehash.ROOT.rglob("*.py"), *(codehash.ROOT.parents[1] / "workflow" / "scripts").glob("*.py")]
    assert len(files) > 50
    for path in files:
        tree = ast.parse(path.read_text())
        assert imports(codehash.statements(tree.body)) == imports(ast.walk(tree)), path
