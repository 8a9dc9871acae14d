# Esper: `make run` runs the main job, `make test` the whole suite. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
# Every installable package, in dependency order. Each can be installed alone
# (`pip install libs/leyline libs/oona`), so a service's image carries only what it uses.
PACKAGES := libs/leyline libs/oona libs/service libs/kasmina libs/tamiyo services/tolaria services/tamiyo services/nissa services/urza services/tezzeret libs/simic libs/integrations libs/cli
STAMP := $(VENV)/.installed
# Where the CPU build of torch comes from; override for another index.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test run lint proto proto-check bench bench-growth chaos clean deploy-check compose-test compose-chaos gpu-check

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (torch CPU first, then pinned dependencies)"
	$(PIP) "$(TORCH_SPEC)" setuptools wheel
	$(PIP) --no-build-isolation -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	@touch $(STAMP)

test: install proto-check deploy-check
	$(BIN)/python -m pytest

# The deployment files checked offline (compose spec, helm lint/template + kubernetes-validate,
# promtool, Dockerfile entrypoints); installs helm and the validators itself (pinned).
deploy-check: install
	$(BIN)/python deploy/ci/deploy_check.py

# The compose cluster started for real with a Docker Engine (installed and started when
# missing; stopped again if it started it): build, up, train a run, check Prometheus, tear down.
compose-test: install
	$(BIN)/python deploy/ci/compose_test.py

# The chaos faults against the compose cluster (docker kill/start each service, kill and restart
# the Redis container) while runs train, then the chaos suite's checks; prints the table and JSON.
compose-chaos: install
	$(BIN)/python deploy/ci/compose_chaos.py

run: install
	$(BIN)/esper up --demo

# On a machine with a CUDA GPU (and CUDA torch in .venv): deploy/gpu/check.sh, the device and precision
# tests with their CUDA cases (they skip elsewhere), a short grown run on the GPU in each precision whose
# report must say so, and benchmarks/precision.py there. Fails at once without CUDA.
gpu-check: install
	PYTHON=$(BIN)/python deploy/gpu/check.sh

lint: install
	$(BIN)/ruff check libs services tests benchmarks
	$(BIN)/ruff format --check libs services tests benchmarks
	$(BIN)/mypy libs/leyline/src

proto: install
	$(BIN)/python -m esper.leyline.jsonschema proto

proto-check: install
	$(BIN)/python -m esper.leyline.jsonschema proto --check

# The quick benchmarks (a few minutes); each prints its result as JSON on its last line.
bench: install
	$(BIN)/python benchmarks/codec.py
	$(BIN)/python benchmarks/dormant_overhead.py
	$(BIN)/python benchmarks/bus.py
	$(BIN)/python benchmarks/decision_latency.py
	$(BIN)/python benchmarks/kernel_load.py
	$(BIN)/python benchmarks/tolaria_overhead.py

# The growth benchmark: 25 trainings (5 seeds x 5 arms: static hosts, heuristic, its oracle, a bare loop),
# the heuristic deciding every 4 steps while seeds are in flight; about 4 minutes on two quiet cores.
bench-growth: install
	$(BIN)/python benchmarks/growth.py --seeds 5 --workers 2 --steps-per-epoch 4

# The full chaos campaign (real services under seeded faults; a bounded one runs in `make test`): about 5 minutes.
chaos: install
	$(BIN)/python benchmarks/chaos.py --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
