# Set-up is two commands: `make install`, then `make test`.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: install data test search train mlflow-ui compare compare-personal bench clean-logs

install: data  ## the project and its dependencies (torch 2.14.1 / torchvision 0.29.1 pinned)
	$(PIP) install -e ".[dev]"

data:  ## offline Fashion-MNIST from Debian's dataset-fashion-mnist, where apt-get exists
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: already installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist || \
		echo "warning: could not install dataset-fashion-mnist; torchvision will try to download"; \
	else echo "no apt-get: Fashion-MNIST will be downloaded by torchvision on first use"; fi

test:  ## the whole suite (a few minutes on 2 CPU cores)
	$(PYTHON) -m pytest tests

search:  ## FedNAS with the default CPU preset on Fashion-MNIST
	$(PYTHON) src/search.py

train:  ## the FedNAS train stage: make train SEARCH_RUN=<run dir or MLflow run id>
	$(PYTHON) src/train.py search_run=$(SEARCH_RUN)

mlflow-ui:  ## MLflow UI on the project's tracking store
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/logs/mlflow.db --default-artifact-root $(CURDIR)/logs/mlartifacts

EXPERIMENT ?= search
FILTER ?=
compare:  ## markdown table and cell pictures of the runs of an MLflow experiment: make compare EXPERIMENT=search FILTER="tags.dataset = 'fashion_mnist'"
	$(PYTHON) scripts/compare_runs.py --experiment $(EXPERIMENT) --filter "$(FILTER)"

compare-personal: EXPERIMENT = compare_cpu
compare-personal:  ## personalization table and client-accuracy histograms: make compare-personal [EXPERIMENT=compare_cpu]
	$(PYTHON) scripts/compare_runs.py --kind personalization --experiment $(EXPERIMENT) --filter "$(FILTER)"

bench:  ## local-step throughput and memory, fast vs op-by-op; round overhead and pruned traffic (not part of `make test`)
	$(PYTHON) scripts/bench_supernet.py
	$(PYTHON) scripts/bench_rounds.py

clean-logs:
	rm -rf logs/search logs/train logs/mlflow.db logs/mlartifacts
