# Two commands do all the set-up on a fresh clone:
#   make demo   create .venv if missing, install, run the main job, print the result table
#   make test   same set-up, run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline copies of downloadable weights and data (see README, "Offline assets").
ifneq ($(wildcard ../shared/assets),)
GENIE_ASSETS ?= $(abspath ../shared/assets)
endif
export GENIE_ASSETS

.PHONY: demo test install clean reproduce bench render gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set (as on CI), an install with
	# --no-compile leaves every process (each notebook kernel, each benchmark subprocess) compiling
	# torch, matplotlib and plotly from source again (measured: CI 20 % slower)
	$(PY) -m pip install -e '.[notebooks,export,test,cluster]'
	touch $(STAMP)

install: $(STAMP)

# zero-shot: distil 128 images (GENIE-D), reconstruct (GENIE-M), evaluate; about a minute on 2 CPU cores
demo: $(STAMP)
	$(PY) -m genie run --model resnet20_cifar10 --w-bits 4 --a-bits 4 --data synthetic --samples 128 \
		--distill-iters 100 --recon-iters 100 --quantizer genie --seed 0 --out runs/demo

# unit and end-to-end tests, and every notebook in smoke mode under nbval, in one session spread
# over TEST_WORKERS processes (one thread each; a notebook or a test module stays on one worker)
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder \
		--nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider tests notebooks

# GPU: notebooks 1-8 at the paper's settings (smoke=False), each run headless by papermill through
# the sweep helper; executed notebooks, result.json files and a combined summary.json/summary.csv
# under $(REPRODUCE_OUT). About 30 full-setting runs in all (notebook 6 alone is 10); GPU time unmeasured.
REPRODUCE_OUT ?= runs/reproduce
reproduce: $(STAMP)
	for nb in notebooks/0[1-8]_*.ipynb; do \
		$(PY) -m genie.sweep $$nb --out $(REPRODUCE_OUT)/$$(basename $$nb .ipynb) --set smoke=False $(REPRODUCE_ARGS) || exit 1; \
	done
	$(PY) -m genie.sweep --collect $(REPRODUCE_OUT)

# notebooks 1-8 executed at the CPU showcase setting (genie/render.py: more images and iterations
# than the smoke setting, still the 100 lossless test images) and committed with their figures;
# the parameters cells keep the smoke defaults that CI runs. About 13 minutes on 2 CPU cores.
render: $(STAMP)
	$(PY) -m genie.render

# the GPU check (benchmarks/gpu_check.py): at most about 8 minutes on one H100/H200, with the system
# Python (torch, torchvision, numpy only); see benchmarks/RESULTS.md for the device command
gpu-check:
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_check.py

# GPU benchmarks at the paper's full setting (see benchmarks/RESULTS.md); writes benchmarks/_out/
bench: $(STAMP)
	$(PY) benchmarks/bench.py all

clean:
	rm -rf $(VENV) runs .pytest_cache
