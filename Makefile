# jester-als: `make run` and `make test` set everything up on a fresh machine (Python 3.11 + Java 17).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONF ?= conf/local.yaml
MASTER ?= local[2]
JOB ?= pipeline
ARGS ?=
DATA := data/jester_synthetic.csv
# The Spark the platforms run (Databricks Runtime 17.3 LTS and serverless environment 4 are Spark 4.0): a second
# environment where the Spark-facing tests run too.
SPARK40 ?= 4.0.5
# Those platforms run Python 3.12, so the second environment uses it where the machine has one (on PATH or
# under pyenv): the Spark-facing tests then also run on a second Python version the package supports. Without
# one it is this machine's python3, and the pass says which Python it ran.
# (pyenv's shim for python3.12 is on PATH but fails unless 3.12 is selected: each candidate is tried.)
PYTHON40 ?= $(shell for p in $$(ls -d $(HOME)/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) \
  $$(command -v python3.12) python3; do $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)
PYTHON40_VERSION := $(shell $(PYTHON40) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV40 := .venv-spark40
STAMP40 := $(VENV40)/.installed-$(SPARK40)-py$(PYTHON40_VERSION)
SPARK40_TESTS := tests/test_tune.py tests/test_connect.py \
  tests/test_everywhere.py::test_pipeline_over_spark_connect_matches_classic
# pip's pyspark finds Spark through whichever python3 is first on PATH (bin/find-spark-home), and its workers
# run PYSPARK_PYTHON: both must be the venv's, or spark-submit exits 127 outside an activated venv.
SPARK_ENV = PYSPARK_PYTHON="$(CURDIR)/$(BIN)/python" PYSPARK_DRIVER_PYTHON="$(CURDIR)/$(BIN)/python"
# Spark warns when the host name resolves to loopback; binding to it explicitly keeps local runs quiet.
export SPARK_LOCAL_IP ?= 127.0.0.1

.DEFAULT_GOAL := help
.PHONY: help setup setup-spark40 java run lint test test-suite test-spark40 test-fast generate bench package pack submit cluster-demo connect-server scale scale-docs run-docs bench-docs defaults-docs speed-docs prepare-speed-docs serve-docs download-jester clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

java:
	@command -v java >/dev/null 2>&1 || { echo "Java is missing: Spark 4 needs Java 17 or 21." \
	  "Install it, e.g. 'sudo apt-get install -y openjdk-17-jre-headless' (Debian/Ubuntu)" \
	  "or 'brew install openjdk@17' (macOS), then run make again." >&2; exit 1; }

# --no-compile: pip would byte-compile every module of pyspark, MLflow and the rest up front; Python compiles
# what it imports when it first imports it.
$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "Python 3.10+ is needed (python3.11 or python3 on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e ".[spark,test]"
	touch $(STAMP)

setup: java $(STAMP) ## create .venv and install the package with Spark and test tools

$(DATA): | setup
	$(BIN)/jester-als generate --conf $(CONF)

generate: setup ## (re)write the synthetic default table
	$(BIN)/jester-als generate --conf $(CONF)

run: setup $(DATA) ## run the pipeline job on the embedded default data (CONF=conf/local.yaml)
	$(BIN)/jester-als pipeline --conf $(CONF)

bench: setup ## time NumPy ALS vs Spark ALS vs the seed loop at Jester size (output/bench/bench.md; ARGS="--set bench.users=N")
	$(BIN)/jester-als bench --conf conf/bench.yaml $(ARGS)

scale: setup ## the scaling study: NumPy vs Spark along users, density and jokes axes (docs/scale.md: how long it took)
	$(BIN)/jester-als scale --conf conf/scale.yaml

run-docs: setup ## copy the last `make run`'s metrics.json into docs/run/ and regenerate the README's section from it
	mkdir -p docs/run
	cp output/local/metrics.json docs/run/
	$(BIN)/python -m jester_als.readme

defaults-docs: setup ## how the default grid was chosen: validation RMSE of candidate grids on the default table (docs/defaults.md)
	$(BIN)/python -m jester_als.defaults --conf $(CONF) --out docs
	$(BIN)/python -m jester_als.readme

serve-docs: setup ## how fast fold-in serves new users: 1, 10,000 and 1 M users (NumPy), 1 M with Spark (docs/serve.md)
	$(BIN)/python -m jester_als.serve --conf $(CONF) --out docs
	$(BIN)/python -m jester_als.readme

speed-docs: setup $(DATA) ## time the pipeline as configured and with each setting that shortens it (docs/speed.md)
	$(BIN)/python -m jester_als.speed --conf $(CONF) --out docs

prepare-speed-docs: setup $(DATA) ## time prepare against a plain read-melt-write: in the job, alone, warm (docs/prepare-speed.md)
	$(BIN)/python -m jester_als.prepare_speed --conf $(CONF) --out docs

bench-docs: setup ## copy the last `make bench` run into docs/ and regenerate the README's section from it
	cp output/bench/bench.json output/bench/bench.md output/bench/bench.png docs/
	$(BIN)/python -m jester_als.readme

scale-docs: setup ## copy the last `make scale` run into docs/ and regenerate the README's section from it
	cp output/scale/scale.json output/scale/scale.md output/scale/scale.png docs/
	$(BIN)/python -m jester_als.readme

$(STAMP40): setup.py
	$(PYTHON40) -m venv --clear $(VENV40)
	$(VENV40)/bin/pip install --quiet --upgrade pip
	$(VENV40)/bin/pip install --quiet --no-compile -e ".[spark,test]" "pyspark[connect]==$(SPARK40)"
	touch $(STAMP40)

setup-spark40: java $(STAMP40) ## a second environment with pyspark 4.0 (what Databricks runs) for the tests

# The suite runs on two pytest-xdist workers (a test file each at a time) beside the pyspark 4.0 pass, each
# pass's output printed whole when it ends: the suite in one process beside that pass left the two cores idle
# 27% of the run (CPU from /proc/stat) while JVMs started and services came up.
test: setup setup-spark40 lint ## lint, then the test suite on the newest pyspark beside the Spark-facing tests on pyspark 4.0
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-suite test-spark40

test-suite: setup
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15 tests

test-spark40: setup-spark40
	@echo "pyspark $(SPARK40) pass on $$($(VENV40)/bin/python --version)"
	$(VENV40)/bin/pytest -q --durations=5 $(SPARK40_TESTS)

lint: setup ## ruff over the library, the jobs and the tests: the checks, then the format (settings in pyproject.toml)
	$(BIN)/ruff check src tests jobs setup.py
	$(BIN)/ruff format --check src tests jobs setup.py

test-fast: setup ## only the tests that need no Spark cluster or server (a few minutes)
	$(BIN)/pytest -q -m "not cluster" tests

package: setup ## build dist/: the wheel, jester_als.zip for --py-files, the job files and configs
	rm -rf dist build
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	cd src && $(CURDIR)/$(BIN)/python -m zipfile -c $(CURDIR)/dist/jester_als.zip jester_als
	mkdir -p dist/jobs dist/conf && cp jobs/*.py dist/jobs/ && cp conf/*.yaml dist/conf/
	@ls -1 dist dist/jobs dist/conf

# A packed virtual environment for the nodes (Spark's Python package management guide: venv-pack, then
# spark-submit --archives ENV.tar.gz#environment): the wheel and its requirements, not pyspark (the cluster's own
# is put on the workers' path). It links to the Python that built it, so the nodes need that Python at the same
# path (PACK_PYTHON; with another layout use conda-pack or PEX).
PACK_PYTHON ?= $(PYTHON)
PACK ?= dist/jester_als_env.tar.gz
PACK_VENV := .venv-pack
pack: setup ## a packed environment for the cluster's nodes: $(PACK) (spark-submit --archives, see docs/running-everywhere.md)
	rm -rf $(PACK_VENV) $(PACK_VENV)-wheel
	$(BIN)/pip wheel --quiet --no-deps -w $(PACK_VENV)-wheel .
	$(PACK_PYTHON) -m venv $(PACK_VENV)
	$(PACK_VENV)/bin/pip install --quiet --no-compile $(PACK_VENV)-wheel/*.whl "pandas<3"
	$(PACK_VENV)/bin/pip uninstall --quiet --yes pip setuptools
	$(BIN)/pip install --quiet "venv-pack>=0.2"
	mkdir -p $(dir $(PACK))
	$(BIN)/venv-pack --quiet -p $(PACK_VENV) -o $(PACK) --force
	rm -rf $(PACK_VENV) $(PACK_VENV)-wheel
	@ls -l $(PACK)

submit: package ## spark-submit a job: make submit MASTER=spark://host:7077 JOB=pipeline ARGS="--set input.path=..."
	$(SPARK_ENV) $(BIN)/spark-submit --master '$(MASTER)' --py-files dist/jester_als.zip --files $(CONF) \
	  dist/jobs/$(JOB).py --conf $(CONF) $(ARGS)

cluster-demo: package $(DATA) ## start a real standalone master + worker, submit the packaged pipeline, check, stop
	$(BIN)/python -m jester_als.localcluster demo --conf $(CONF) --dist dist

connect-server: setup ## run a local Spark Connect server in the foreground (jobs then take --remote sc://...)
	$(BIN)/python -m jester_als.localcluster connect-server

download-jester: setup ## download the real Jester dataset 1 (3 .xls files) into data/jester/ (needs internet; DATASET=3 for the 150-joke sheet)
	$(BIN)/python -m jester_als.download --dataset $(or $(DATASET),1) --into $(if $(filter 3,$(DATASET)),data/jester3,data/jester)

clean: ## remove the venv, build products, outputs and generated data
	rm -rf $(VENV) $(VENV40) dist build src/*.egg-info output data spark-warehouse metastore_db derby.log .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
