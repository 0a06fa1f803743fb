# The way in. Every target sets up what it needs first.
VENV          ?= .venv
PY            := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
PROMPT        ?= compute 5 factorial
MODEL         ?=
# Offline fixture driven by `make run` until a trained default model ships.
FIXTURE       := models/fixture
FIXTURE_MLX   := models/fixture-mlx
CONVERT_ARGS  ?=

.PHONY: setup test run convert parity fixture clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: a looser spec would pull a CUDA build and its gigabytes
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[torch,dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

$(FIXTURE_MLX): | setup
	rm -rf $(FIXTURE)
	$(PY) -m reflex_torch.fixture $(FIXTURE)
	$(PY) -m convert --checkpoint $(FIXTURE)/reflex.pt --backbone $(FIXTURE)/backbone --out $@

fixture: $(FIXTURE_MLX)

run: setup $(if $(MODEL),,$(FIXTURE_MLX))
	$(VENV)/bin/reflex-mlx run "$(PROMPT)" --model $(if $(MODEL),$(MODEL),$(FIXTURE_MLX))

# Default: download the released reflex.pt + Qwen2.5-Coder-7B-Instruct and write a
# 4-bit MLX model to ~/.cache/reflex-mlx/reflex-coder7b-mlx. Pass options with CONVERT_ARGS.
convert: setup
	$(PY) -m convert $(CONVERT_ARGS)

parity: setup
	$(PY) -m pytest -q -s tests/test_parity_cpu.py tests/test_prompt.py

clean:
	rm -rf $(FIXTURE) $(FIXTURE_MLX)
