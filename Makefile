# The README's two commands: `make run` (set up, start the app) and `make test` (set up, run every check).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
WHEEL_VENV := .venv-wheel

.PHONY: run test test-postgresql test-mariadb lint test-packages package-check gpu-wheels

run: $(RUNTIME_STAMP)
	$(PY) -m core app

# The suite in a test process a core (pytest-xdist), each torch on one thread: two OpenMP teams of two
# on 2 cores decoded ~8 × slower. The browser tests run one after another in one process (grouped by
# their folder in tests/conftest.py). 1.85 × faster than one process (402 s against 737-752 s, 937 tests).
test: $(DEV_STAMP) test-packages lint package-check
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist loadgroup

# The same suite with every test's database a new one on PostgreSQL or MariaDB (a throwaway server of
# each test process's own, tests/fixtures/database_servers.py); the tests of SQLite's own files are
# skipped. `make test` runs tests/unit/test_databases.py on all three.
test-postgresql test-mariadb: test-%: $(DEV_STAMP) test-packages
	LOCALLLM_TEST_DATABASE=$* OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist loadgroup

lint: $(DEV_STAMP)
	$(PY) -m ruff check --no-cache .
	$(PY) -m ruff format --no-cache --check .

# Installed the way users install it (`pip install .` into a fresh environment, then `localllm`), away
# from the checkout: the package must carry everything it needs. Nothing is byte-compiled there
# (torch's thousands of files took half of this check's minute): its two commands import few of them.
package-check: $(DEV_STAMP)
	rm -rf build dist $(WHEEL_VENV) *.egg-info
	$(PY) -m pip wheel --disable-pip-version-check --no-deps -q -w dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-compile dist/*.whl
	cd / && LOCALLLM_DATA_DIR=$(CURDIR)/build/wheel-data LOCALLLM_MODELS_DIR=$(CURDIR)/build/wheel-models \
		$(CURDIR)/$(WHEEL_VENV)/bin/localllm --help > /dev/null
	cd / && LOCALLLM_DATA_DIR=$(CURDIR)/build/wheel-data LOCALLLM_MODELS_DIR=$(CURDIR)/build/wheel-models \
		$(CURDIR)/$(WHEEL_VENV)/bin/localllm models

test-packages:
	@scripts/ensure-test-packages.sh

$(PY):
	$(PYTHON) -m venv $(VENV)

# The project itself is installed editable, without dependencies (requirements*.txt has them): the
# `localllm` command in .venv/bin. Then the engine's own CPU kernels are compiled for this machine (~10 s,
# once; core/inference/native.py: without a C++ compiler it says so and torch's kernels run).
$(RUNTIME_STAMP): requirements.txt pyproject.toml | $(PY)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	$(PY) -m core.inference.native
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(PY)
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -e .
	$(PY) -m core.inference.native
	touch $@ $(RUNTIME_STAMP)

# For the check on a lent GPU machine (bench/gpu_check.sh): it has Python 3.12 and a CUDA torch but
# none of the other packages, and no network, so their wheels travel with the working tree (`run`'s
# carry: .gpu-wheels, ~40 MB), at the versions of $(VENV).
GPU_PACKAGES := transformers huggingface_hub hf-xet tokenizers safetensors openai jiter sniffio httpx2 \
	httpcore2 truststore kernels tomlkit fastapi opentelemetry-api starlette uvicorn SQLAlchemy greenlet \
	pydantic pydantic_core annotated-types typing-inspection python-multipart anyio typing_extensions \
	click h11 psutil
gpu-wheels: $(DEV_STAMP)
	rm -rf .gpu-wheels
	$(PY) -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 -d .gpu-wheels \
		$$($(PY) -m pip freeze | grep -iE "^($$(echo $(GPU_PACKAGES) | tr ' ' '|'))==")
