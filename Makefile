# make demo:       set up (virtual environment, pinned requirements, Fashion-MNIST from Debian when apt exists),
#                  train the adaptive method on Fashion-MNIST with 250 labels for 256 steps, then re-evaluate its
#                  best checkpoint (~6 min on a 2-core CPU with bf16, ~13 on one with AVX2 only)
# make demo-baseline: the same length without the unlabeled images (labeled only), to compare with
# make test:       set up, then run the test suite on the CPU and re-evaluate the released checkpoints
# make test-fast:  while editing: the tests not marked slow (the step, every policy, the copies, the docs), < 90 s
# make gpu-check:  on one NVIDIA GPU: benchmark, released checkpoints on CUDA, the headline at the medium preset
# make copies:     after editing a shared module in mixmatch/, copy it to every other self-contained folder
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo

.PHONY: setup data demo demo-baseline test test-fast gpu-check copies clean
SHARED  := augment checkpoint data errors flags loop metrics models policy runtime semisup
FOLDERS := fixed adaptive etc/fixmatch etc/meanteacher etc/rotnet etc/simclr

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	else echo "no apt-get: Fashion-MNIST must be given with --data-root DIR (or --download)"; fi

DEMO   := --steps 256 --eval-every 64 --n-val 1000

demo: setup data
	$(PY) adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce $(DEMO) --out $(DEMO_OUT) --resume auto
	$(PY) adaptive/train.py --evaluate $(DEMO_OUT)/best.pt

demo-baseline: setup data
	$(PY) mixmatch/train.py --labeled-only $(DEMO) --out $(DEMO_OUT)-labeled-only --resume auto

gpu-check: setup data
	$(PY) etc/gpu_check.py

test: setup data
	$(PY) -m pytest -q tests
	$(PY) etc/verify_pretrained.py

test-fast: setup data
	$(PY) -m pytest -q -m 'not slow' tests

copies:
	for d in $(FOLDERS); do for m in $(SHARED); do cp mixmatch/$$m.py $$d/$$m.py; done; done

clean:
	rm -rf $(VENV) runs
