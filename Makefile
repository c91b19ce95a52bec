# Set-up is two commands: `make install`, then `make test`.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: help install data browser test test-avx2 test-slurm test-stress fuzz search train mlflow-ui compare compare-personal tune compare-tuned bench bench-build bench-tune bench-results docs clean-logs
.DEFAULT_GOAL := help

help:  ## this list of targets and what each does
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-17s %s\n", $$1, $$2}'

install: data browser  ## the project and its dependencies (torch 2.14.1 / torchvision 0.29.1 pinned)
	$(PIP) install -e ".[dev]"

data:  ## offline Fashion-MNIST from Debian's dataset-fashion-mnist, where apt-get exists
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: already installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist || \
		echo "warning: could not install dataset-fashion-mnist; torchvision will try to download"; \
	else echo "no apt-get: Fashion-MNIST will be downloaded by torchvision on first use"; fi

browser:  ## Debian's chromium and chromium-driver for tests/test_mlflow_ui.py, where apt-get exists (else it skips)
	@if command -v chromedriver >/dev/null 2>&1; then echo "chromedriver: already installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver || \
		echo "warning: could not install chromium and chromium-driver; the MLflow UI test will be skipped"; \
	else echo "no apt-get: the MLflow UI test is skipped unless chromium and chromedriver are on PATH"; fi

# the supernet and the methods' local steps, run again on oneDNN's AVX2 kernels (an AVX-512 machine
# picks others): AVX2-only CPUs once aborted the suite inside oneDNN (tests/test_onednn_kernels.py)
AVX2_TESTS = tests/test_onednn_kernels.py tests/test_search_space.py tests/methods -m "not end_to_end"

# pytest-xdist: two test processes (the suite's tests are single runs of a second or more, mostly on one core)
TEST_PROCESSES ?= 2

test:  ## the whole suite, then the supernet and method tests on AVX2 kernels (a few minutes on 2 CPU cores)
	$(PYTHON) -m pytest -n $(TEST_PROCESSES) tests
	$(MAKE) --no-print-directory test-avx2

test-avx2:  ## the supernet and method tests with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)
	ONEDNN_MAX_CPU_ISA=AVX2 $(PYTHON) -m pytest -n $(TEST_PROCESSES) $(AVX2_TESTS)

test-stress:  ## eight runs at once on one SQLite MLflow store, as processes and as a submitit sweep (a few minutes)
	$(PYTHON) -m pytest -m stress tests/test_concurrent_store.py

fuzz:  ## the config fuzz test at length: FUZZ_EXAMPLES=1000 FUZZ_SEED=1 make fuzz (make test runs 24 examples)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} FUZZ_SEED=$${FUZZ_SEED:-1} $(PYTHON) -m pytest -s tests/test_config_fuzz.py

test-slurm:  ## SLURM sweeps and a 2- and 3-task distributed run on a real local SLURM (apt-get installs it; root; about 3 min on 2 cores)
	PYTHON="$(PYTHON)" bash scripts/slurm_local.sh

search:  ## FedNAS with the default CPU preset on Fashion-MNIST
	$(PYTHON) src/search.py

train:  ## the FedNAS train stage: make train SEARCH_RUN=<run dir or MLflow run id>
	$(PYTHON) src/train.py search_run=$(SEARCH_RUN)

MLFLOW_PORT ?= 5000
mlflow-ui:  ## MLflow UI on the project's store: prints each experiment's runs URL, then serves it with one worker
	$(PYTHON) scripts/mlflow_ui.py --port $(MLFLOW_PORT)

EXPERIMENT ?= search
FILTER ?=
compare:  ## markdown table and cell pictures of the runs of an MLflow experiment: make compare EXPERIMENT=search FILTER="tags.dataset = 'fashion_mnist'"
	$(PYTHON) scripts/compare_runs.py --experiment $(EXPERIMENT) --filter "$(FILTER)"

compare-personal: EXPERIMENT = compare_cpu
compare-personal:  ## personalization table and client-accuracy histograms: make compare-personal [EXPERIMENT=compare_cpu]
	$(PYTHON) scripts/compare_runs.py --kind personalization --experiment $(EXPERIMENT) --filter "$(FILTER)"

tune compare-tuned: EXPERIMENT = digits_compare
tune:  ## every method of an experiment tuned alike on val data, picks over seeds: make tune [EXPERIMENT=digits_compare]
	$(PYTHON) scripts/tune.py experiment=$(EXPERIMENT)

compare-tuned:  ## reprint the table of logs/tune_<experiment>/tuning.json (else the committed benchmarks/tune_<experiment>.json): make compare-tuned [EXPERIMENT=digits_compare]
	$(PYTHON) scripts/tune.py experiment=$(EXPERIMENT) --table

bench:  ## local-step throughput and memory, fast vs op-by-op; round overhead and pruned traffic; start-up (not part of `make test`)
	$(PYTHON) scripts/bench_supernet.py
	$(PYTHON) scripts/bench_rounds.py
	$(PYTHON) scripts/bench_half_grid.py --threads 1
	$(PYTHON) scripts/bench_planted.py
	$(PYTHON) scripts/bench_startup.py --first-round
	$(PYTHON) scripts/bench_clients.py

# the tabular benchmark (docs/bench.md): its ground truth, the methods searched in its space, their table
BENCH = benchmarks/fednas_bench
BENCH_SPLITS ?= dir0.1 iid

bench-build:  ## train every architecture of the benchmark's space (hours on 2 cores; resumes where it stopped)
	OMP_NUM_THREADS=1 $(PYTHON) scripts/build_bench.py --workers 2 --out $(BENCH)/build

bench-tune:  ## every NAS method tuned and searched in the benchmark's space (3 seeds, each split), random search and successive halving at their costs
	for split in $(BENCH_SPLITS); do \
	  partition=$$(case $$split in dir0.1) ;; iid) echo partition=iid \~partition.alpha;; dir*) echo partition.alpha=$${split#dir};; esac); \
	  OMP_NUM_THREADS=1 $(PYTHON) scripts/tune.py experiment=bench_methods bench_table=null $$partition cluster=local \
	    --jobs 2 --out logs/tune_bench_methods_$$split || exit 1; \
	  cp logs/tune_bench_methods_$$split/tuning.json benchmarks/tune_bench_methods_$$split.json; \
	done
	$(PYTHON) scripts/bench.py export $(foreach split,$(BENCH_SPLITS),logs/tune_bench_methods_$(split)) --out $(BENCH)/searches.jsonl
	for steps in 600 2400; do OMP_NUM_THREADS=1 $(PYTHON) scripts/bench.py random-search --client-steps $$steps \
	  --candidates 4 --splits $(BENCH_SPLITS) --out $(BENCH)/random_search_$$steps.json || exit 1; done
	OMP_NUM_THREADS=1 $(PYTHON) scripts/bench.py random-search --halving --client-steps 600 --candidates 4 \
	  --splits $(BENCH_SPLITS) --out $(BENCH)/halving_600.json
	OMP_NUM_THREADS=1 $(PYTHON) scripts/bench.py random-search --halving --client-steps 2400 --candidates 8 \
	  --splits $(BENCH_SPLITS) --out $(BENCH)/halving_2400.json

bench-results:  ## once the build is complete: the table and datasheet, the methods' and random search's scores, evolution
	$(PYTHON) scripts/build_bench.py --finalize --out $(BENCH)/build --table $(BENCH)/fmnist_bench.json.gz
	$(PYTHON) scripts/bench.py methods $(BENCH)/searches.jsonl --random-search $(BENCH)/random_search_600.json \
	  $(BENCH)/random_search_2400.json $(BENCH)/halving_600.json $(BENCH)/halving_2400.json --out $(BENCH)/methods.md
	$(PYTHON) scripts/bench.py evolution --out $(BENCH)/evolution.json

docs:  ## regenerate the generated tables in docs/ (the config-group table of docs/configs.md)
	$(PYTHON) scripts/config_docs.py --write

clean-logs:  ## delete every run, the MLflow store and its artifacts under logs/
	rm -rf logs/search logs/train logs/mlflow.db logs/mlartifacts
