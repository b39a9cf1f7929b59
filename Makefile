# attune — quick start:  make demo   (main job on the embedded default)
#                        make test   (the whole suite)
# Both install into .venv first when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ATTUNE_HOME ?= .attune
export ATTUNE_HOME

.PHONY: install demo test unit clean

install: $(STAMP)

# torch is pinned and installed first so pip never resolves a CUDA build. On a CPU machine the
# last step compiles DeepSpeed's CPU all-reduce op (about a minute, once) so that the first
# training run does not.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -c "from train._deepspeed import build_cpu_ops; print('DeepSpeed CPU op:', 'built' if build_cpu_ops() else 'not needed here')"
	touch $(STAMP)

# The end-to-end demo (`attune demo`): write the demo data, fine-tune john, jane and newsdesk
# (2 workers, ZeRO-2; registered and gated), create keys, serve them on 127.0.0.1:8000 and show
# john and jane disagree about the same headline. Flags pass through: make demo ARGS="--keep-running".
demo: install
	$(BIN)/attune demo $(ARGS)

test: install
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) $(ATTUNE_HOME) .pytest_cache
