"""Snakemake's view of one job, without running it: the engine behind `polypsi.job.mock_job`.

It loads the project's Snakefile as Snakemake does (config files, overrides) and asks the rule
for the job of the given wildcards, like PyPSA-Eur's `mock_snakemake`. It uses Snakemake's
internal classes, whose signatures change between major versions; this matches Snakemake 9.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import PolypsiError

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"


@contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def snakemake_job(rule: str, configfile, workdir, config: dict, wildcards: dict):
    """A `snakemake.script.Snakemake` object for `rule`, as its script would receive it."""
    from snakemake.api import Workflow  # lazy: Snakemake's internals are only needed here (api first: import order)
    from snakemake.dag import DAG  # lazy: as above
    from snakemake.jobs import Job  # lazy: as above
    from snakemake.logging import LoggerManager, logger  # lazy: as above
    from snakemake.script import Snakemake  # lazy: as above
    from snakemake.settings.types import (  # lazy: as above
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    if not SNAKEFILE.is_file():
        raise PolypsiError(f"mock_job needs the project's Snakefile ({SNAKEFILE}); run from a checkout")
    workdir = Path(workdir).resolve()
    configfiles = [Path(configfile).resolve()] if configfile else []
    for f in configfiles:
        if not f.is_file():
            raise PolypsiError(f"config file {f} does not exist")
    with _cwd(workdir):
        workflow = Workflow(
            config_settings=ConfigSettings(configfiles=configfiles, config=dict(config)),
            resource_settings=ResourceSettings(),
            workflow_settings=WorkflowSettings(),
            logger_manager=LoggerManager(logger, OutputSettings()),
            storage_settings=StorageSettings(),
            dag_settings=DAGSettings(rerun_triggers=[]),
            storage_provider_settings={},
        )
        workflow.include(SNAKEFILE)
        for f in configfiles:  # the Snakefile's own configfile: directive must not win over the user's file
            workflow.configfile(f)
        workflow.global_resources = {}
        try:
            r = workflow.get_rule(rule)
        except Exception:
            names = sorted(x.name for x in workflow.rules)
            raise PolypsiError(f"the workflow has no rule {rule!r} for this config; rules: {', '.join(names)}") from None
        missing = sorted(set(r.wildcard_names) - set(wildcards))
        if missing:
            raise PolypsiError(f"rule {rule} needs wildcard(s) {missing}, e.g. mock_job({rule!r}, ..., "
                               + ", ".join(f"{w}=..." for w in missing) + ")")
        dag = DAG(workflow, rules=[r])
        job = Job(r, dag, {k: str(v) for k, v in wildcards.items()})

        def absolute(files):
            for i, f in enumerate(files):
                files[i] = os.path.abspath(f)

        absolute(job.input), absolute(job.output), absolute(job.log)
        return Snakemake(job.input, job.output, job.params, job.wildcards, job.threads, job.resources, job.log,
                         workflow.config, r.name, None)
