# selfevolve — `make setup`, then `make serve` (one shell) and `make iterate` (another), `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SE     := $(VENV)/bin/selfevolve
CONFIG ?= configs/default.yaml
ARGS   ?=

.PHONY: setup test test-fast iterate status revise bench serve clean

setup:            ## create .venv, install everything, prepare the default model (idempotent)
	bash scripts/setup.sh

test:             ## the whole suite: unit tests and integration tests on the real model
	$(PY) -m pytest -q --durations=25

test-fast:        ## unit tests only (no model)
	$(PY) -m pytest -q -m "not integration"

iterate:          ## one round: collect → revise → curate → train → compare → gate → deploy (ARGS="--rounds 3")
	$(SE) iterate --config $(CONFIG) $(ARGS)

status:           ## rounds, win rates, gate decisions, live adapter
	$(SE) status --config $(CONFIG)

revise:           ## hindsight-revise the configured chats (default: the shipped sample chats)
	$(SE) revise --config $(CONFIG) $(ARGS)

bench:            ## benchmarks: revise throughput vs raw vLLM, reviser quality per strategy
	$(PY) scripts/bench_revise.py --config $(CONFIG)
	$(PY) scripts/bench_reviser_quality.py --config $(CONFIG)

serve:            ## vLLM + the capture gateway (chat page at http://127.0.0.1:8080/); Ctrl-C stops both
	$(SE) serve --config $(CONFIG) $(ARGS)

clean:
	rm -rf runs bench_out
