# The two commands of the README. Each builds the environment first if it is missing or stale
# (tools/setup_env.sh is idempotent and caches compiled wheels under ~/.cache/us3l).
US3L_VENV ?= $(CURDIR)/.venv
PY := $(US3L_VENV)/bin/python
export US3L_VENV

.PHONY: env demo test bench clean-demo

env:
	bash tools/setup_env.sh

demo: env
	$(PY) tools/run_all.py --preset demo --out runs/main

# Two xdist workers (the suite's two longest files start first, see tests/conftest.py); the
# multi-process tests start their own processes, so more workers than cores only slows it down.
TEST_WORKERS ?= 2
test: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: env
	$(PY) bench/pretrain_cost.py
	$(PY) bench/probe_solver.py

clean-demo:
	rm -rf runs/main
