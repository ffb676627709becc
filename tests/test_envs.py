"""The conda environment of the rules (workflow/envs/polypsi.yaml) pins what requirements.txt pins."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "workflow" / "envs" / "polypsi.yaml"
# Run the workflow or the tests; the jobs themselves do not import them.
DRIVER_ONLY = {"snakemake", "pytest", "selenium"}


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"unpinned requirement {line!r}: pin it with =="
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_conda_env_pins_match_requirements():
    required = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load(ENV.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_env = _pins(pip)
    expected = {k: v for k, v in required.items() if k not in DRIVER_ONLY}
    assert in_env == expected, (
        "workflow/envs/polypsi.yaml and requirements.txt disagree; requirements.txt is the source: "
        f"only in requirements.txt {sorted(set(expected.items()) - set(in_env.items()))}, "
        f"only in the env {sorted(set(in_env.items()) - set(expected.items()))}"
    )


def test_every_rule_with_code_uses_the_env():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        assert text.count("script:") == text.count('conda:\n'), f"{smk.name}: a rule without `conda:`"
        assert text.count("script:") == text.count('"../envs/polypsi.yaml"'), smk.name
    assert ENV.exists()
