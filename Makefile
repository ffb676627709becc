# Two entry points: `make demo` and `make test`. Both create .venv from the pinned
# requirements when it is missing (or when requirements.txt changed).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CORES   ?= 2
DEMO    ?= config/demo.yaml
CONFIG  ?=

.PHONY: venv demo smoke check test test-fast test-slurm benchmark benchmark-stats benchmark-scoring-k benchmark-scoring-device schema lint clean

# pip byte-compiles every installed module one at a time (mostly torch); compileall does it on every core
# afterwards, 23-25 s less for the whole install on 2 cores (a file that does not compile, such as torch's
# Python 3.12 test helper, is left to Python, as pip leaves it).
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -r requirements.txt
	$(BIN)/pip install --quiet --no-compile --no-deps -r requirements-test.txt
	$(BIN)/pip install --quiet --no-compile --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(DEMO) --rerun-incomplete

smoke: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml --rerun-incomplete

# The preflight: every missing file, unreachable download and invalid setting of a run, listed at once.
# `make check` checks config/config.yaml; `make check CONFIG=overlay.yaml` merges an overlay over it.
check: $(STAMP)
	$(BIN)/python -m polypsi.preflight $(if $(CONFIG),--configfile $(CONFIG))

# One worker per core; a test file stays on one worker, so its module fixtures (a smoke run) are built once;
# the end-to-end files start first (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n $(CORES) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n $(CORES) --dist loadfile --no-loadscope-reorder -m "not slow"

# profiles/slurm on a real single-node SLURM (as root): tests/test_slurm.py starts it (scripts/slurm_cluster.sh,
# installing slurm-wlm and munge if missing), runs config/smoke.yaml through sbatch and locally, compares, stops it.
test-slurm: $(STAMP)
	POLYPSI_TEST_SLURM=1 $(BIN)/python -m pytest -q -ra -m slurm tests/test_slurm.py

# The whole pipeline on a paper-shaped workload (random weights, generated images), stage by stage against bare
# forward passes in the same run (docs/performance.md). IMAGES: generated images; CHANNELS: the first C channels
# of each layer (empty: all). On a GPU machine, `make benchmark IMAGES=10000` is the paper's scale; BENCH_ARGS passes
# more options, e.g. BENCH_ARGS="--profile profiles/workstation --image-shards 1 --channel-shards 1 --draw-shards 1".
IMAGES   ?= 500
CHANNELS ?=
benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py --images $(IMAGES) $(if $(CHANNELS),--channels $(CHANNELS)) --cores $(CORES) $(BENCH_ARGS)

# The batched scorer against the per-channel scikit-learn reference.
benchmark-stats: $(STAMP)
	$(BIN)/python benchmarks/bench_stats.py

# The batched scorer's time per channel at K = 25..200 top patches, part by part, with growth exponents.
benchmark-scoring-k: $(STAMP)
	$(BIN)/python benchmarks/bench_scoring_k.py

# What a GPU can and cannot speed up in the scorer (torch operations against the CPU-only rest); DEVICE=cuda on a GPU.
DEVICE ?= cpu
benchmark-scoring-device: $(STAMP)
	$(BIN)/python benchmarks/bench_scoring_device.py --device $(DEVICE)

schema: $(STAMP)
	$(BIN)/python -m polypsi.config config/schema.json

# The Snakemake workflow catalog's checks: the linter (the smoke and the paper config) and snakefmt.
lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/smoke.yaml
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

clean:
	rm -rf results .snakemake report.html .bench
