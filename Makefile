# The two set-up commands: `make run` serves the API, `make test` runs the tests.
# Both create .venv and install what is missing (system GL libraries through apt).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
TORCH_INDEX ?=
export PYOPENGL_PLATFORM ?= egl

.PHONY: run test venv sysdeps sysdeps-test worker clean

sysdeps:
	@bash scripts/install_sysdeps.sh run

sysdeps-test:
	@bash scripts/install_sysdeps.sh test

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build, so no other package pulls a CUDA one
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: sysdeps $(VENV)/.installed

run: venv
	SHAPESEARCH_PORT=$(PORT) $(VENV)/bin/shapesearch serve --port $(PORT)

# A Celery worker for the API's jobs (needs SHAPESEARCH_JOB_EXECUTOR=celery or REDIS_URL on both).
worker: venv
	$(VENV)/bin/shapesearch worker

test: sysdeps-test venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache
