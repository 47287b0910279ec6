# make demo: set up (virtual environment, pinned requirements, Fashion-MNIST from Debian when apt exists) and
#            train the adaptive method on Fashion-MNIST with 250 labels for a short schedule (~10 min, 2-core CPU)
# make test: set up, then run the test suite on the CPU and re-evaluate the released checkpoints
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo

.PHONY: setup data demo test clean

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

demo: setup data
	$(PY) adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce \
	    --steps 1536 --eval-every 512 --acc-window 512 --out $(DEMO_OUT) --resume auto

test: setup data
	$(PY) -m pytest -q tests
	$(PY) etc/verify_pretrained.py

clean:
	rm -rf $(VENV) runs
