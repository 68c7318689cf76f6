#!/usr/bin/env bash
# GPU check: the paper path's stand-in run (configs/paper-standin.toml) on CUDA in bf16, printing the wall time and
# peak GPU memory of every stage. CI never needs it; run it whenever a GPU machine is lent.
#
#   scripts/gpu-check.sh --fetch-wheels   # here, with pip and internet: the wheels the GPU machine lacks, into .whl/
#   scripts/gpu-check.sh                  # on the GPU machine, from the repo root (carry .whl)
#   scripts/gpu-check.sh --dry            # anywhere: the same steps on CPU in fp32, to check the script itself
#
# The lent machine (tool library: device/KINDS.md) has python3 with torch (CUDA), accelerate, peft, tokenizers,
# safetensors, numpy, pandas, pyarrow, einops, jaxtyping, but not TRL, TransformerLens, datasets, plotly, kaleido
# or rouge-score, and an older transformers: those travel as wheels (.whl/, git-ignored) and are installed to
# /tmp/site for the run; torch is never carried (the machine's CUDA build is used).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu
case "${1:-}" in
  "") ;;
  --dry) mode=dry ;;
  --fetch-wheels) mode=fetch ;;
  *) echo "usage: scripts/gpu-check.sh [--dry | --fetch-wheels]" >&2; exit 2 ;;
esac

# our pins (pyproject.toml) of what the GPU image lacks or has at another version, and their own needs
WHEELS=(transformers==5.23.0 peft==0.21.2 trl==1.16.0 transformer-lens==3.9.0 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19 plotly==7.1.0 kaleido==1.5.0 choreographer==1.4.0 logistro==2.0.1 rouge-score==0.1.2
        nltk==3.10.4 beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
        transformers-stream-generator==0.0.5 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 platformdirs==4.14.9 tzdata==2026.6)

if [ "$mode" = fetch ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w"
  done
  du -sh .whl
  exit 0
fi

if [ "$mode" = gpu ]; then
  PY=python3
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --dry on a CPU machine")'
  device=cuda; dtype=bfloat16
else
  PY=${LA_PYTHON:-.venv/bin/python}
  device=cpu; dtype=float32
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
run=${GPU_CHECK_RUN:-/tmp/gpu-check-run}
rm -rf "$run"
SECONDS=0
$PY -m analyses.cli reproduce --preset configs/paper-standin.toml --run-dir "$run" \
  --set model.device="\"$device\"" --set model.dtype="\"$dtype\"" 2>&1 | tee "$run.log" | grep -E '^\[' || true
[ -f "$run/report/report.html" ] || { echo "gpu-check: the stand-in run failed; see $run.log"; tail -5 "$run.log"; exit 1; }
echo "gpu-check: stand-in run on $device in $dtype took ${SECONDS}s"
$PY - "$run" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
print(f"{'stage':32} {'wall s':>8} {'peak GPU GiB':>13} {'size MiB':>9}")
for m in sorted(run.rglob("stage.json")):
    d = json.loads(m.read_text())
    peak = d.get("peak_gpu_memory_gib")
    size = sum(f.stat().st_size for f in m.parent.rglob("*") if f.is_file())
    print(f"{d.get('stage', m.parent.name):32} {d.get('wall_seconds', float('nan')):8.1f} "
          f"{'-' if peak is None else f'{peak:.2f}':>13} {size / 2**20:9.1f}")
PY
