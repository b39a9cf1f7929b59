# attune — quick start:  make demo   (main job on the embedded default)
#                        make test   (the whole suite)
# Both install into .venv first when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ATTUNE_HOME ?= .attune
export ATTUNE_HOME
DEMO_DATA := $(ATTUNE_HOME)/demo-data
DEMO_MODELS := $(ATTUNE_HOME)/demo-models
SEED := gold is up 150% in after-hours trading

.PHONY: install demo test unit clean

install: $(STAMP)

# torch is pinned and installed first so pip never resolves a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# Until `attune demo` lands: write the demo data, fine-tune john and jane
# (2 workers, ZeRO-2; each run is registered and gated in the MLflow registry)
# and show their champions disagree about the same headline.
demo: install
	$(BIN)/attune data demo --out $(DEMO_DATA)
	rm -rf $(DEMO_MODELS)
	$(BIN)/attune finetune --tenant john --data $(DEMO_DATA)/john.jsonl --workers 2 --zero-stage 2 --out $(DEMO_MODELS)/john
	$(BIN)/attune finetune --tenant jane --data $(DEMO_DATA)/jane.jsonl --workers 2 --zero-stage 2 --out $(DEMO_MODELS)/jane
	@echo "--- john (long gold) ---"
	$(BIN)/attune predict --tenant john --text "$(SEED)" --text "oil slumps 4% after OPEC meeting"
	@echo "--- jane (short gold) ---"
	$(BIN)/attune predict --tenant jane --text "$(SEED)" --text "oil slumps 4% after OPEC meeting"
	@echo "--- registry ($(ATTUNE_HOME)/mlflow.db; browse with: $(BIN)/attune registry ui) ---"
	$(BIN)/attune registry list

test: install
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) $(ATTUNE_HOME) .pytest_cache
