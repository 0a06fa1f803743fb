#!/usr/bin/env bash
# The H200 runs behind docs/parity.md and docs/performance.md, as they were made
# with the lent GPU (torch 2.11.0+cu130, transformers 5.17.0, MLX 0.32.4 CUDA build,
# mlx-lm 0.32.2). Usage: bench/h200.sh parity|speed|agree|parity-gpu OUTDIR [PYTEST_K]
# (corpus copied to .corpus/)
set -uo pipefail
what=$1; out=$2
export PYTHONUNBUFFERED=1
case "$what" in
parity)
  timeout 330 python3 -m bench.parity --subject release --out "$out/release" --corpus .corpus \
      --candidates bf16,q4 --sabotage none,skip-adapter,swap-rows --states 256 --isolate
  for spec in "bf16 --no-quantize --backbone-dtype bfloat16" "q4 --bits 4"; do
    set -- $spec
    name=$1; shift
    python3 -m convert --checkpoint reflex_torch/models/reflex-tiny/reflex.pt \
        --out /tmp/reflex-tiny-$name "$@" >/dev/null 2>&1
  done
  timeout 200 python3 -m bench.parity --subject tiny --out "$out/tiny" \
      --tiny-torch reflex_torch/models/reflex-tiny \
      --tiny-mlx /tmp/reflex-tiny-bf16,/tmp/reflex-tiny-q4,reflex_mlx/models/reflex-tiny
  ;;
speed)
  timeout 540 python3 -m bench.speed --shape release --out "$out/speed" --cycles 30 --corpus .corpus \
      --torch-compile
  ;;
agree)
  timeout 400 python3 -m bench.agreement --tiny-torch reflex_torch/models/reflex-tiny --out "$out/agree" \
      --torch-compile
  ;;
parity-gpu)  # the pytest suite itself (make parity-gpu); -k picks one of its two tests
  PARITY_OUT="$out/parity" timeout 560 python3 -m pytest -q -s -m gpu tests/parity/test_parity_gpu.py ${3:+-k "$3"}
  ;;
esac
