#!/usr/bin/env bash
# One command for the GPU-node benchmark of issue 12, section 4 (bench/device.py):
#   bash bench/device.sh            # on a node with an NVIDIA GPU (about 6 minutes; at
#                                   # most bench/device.py's --budget 450 s plus the checks)
#   bash bench/device.sh --cpu-smoke  # anywhere: toy sizes on the CPU, checks the script
# It needs the project's own dependencies only (pyproject.toml: torch, torchvision with
# nvJPEG, imagecodecs, tifffile, opencv, shapely, openslide-bin...). When they are not
# importable it tries `pip install -e .` once (from a registry or a wheel cache) and says
# what is missing if that fails. The table is printed and, when $OUT is set, written to
# $OUT/device.md with the full log in $OUT/device.log.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
LOG="${OUT:-/tmp}/device.log"
mkdir -p "$(dirname "$LOG")"

check() {
  "$PY" - <<'EOF'
import importlib, sys
missing = []
for name in ("exaslide", "torch", "torchvision", "imagecodecs", "tifffile", "cv2",
             "shapely", "pyarrow", "pydantic", "openslide"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    print("missing: " + "; ".join(missing))
    sys.exit(1)
EOF
}

echo "== python: $($PY --version 2>&1) ($PY)"
if ! check; then
  echo "== installing the project's dependencies: $PY -m pip install -e . (log: $LOG)"
  start=$(date +%s)
  if ! "$PY" -m pip install -q -e . >>"$LOG" 2>&1; then
    echo "pip install failed (see $LOG). This benchmark needs the packages listed in"
    echo "pyproject.toml; install them (e.g. from a wheel cache) and run again."
    exit 2
  fi
  echo "== installed in $(( $(date +%s) - start )) s (not part of the benchmark's time)"
  check || { echo "still missing after install; see $LOG"; exit 2; }
fi

"$PY" - <<'EOF'
import torch, torchvision
cuda = torch.cuda.is_available()
print(f"== torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

start=$(date +%s)
if [[ -n "${OUT:-}" ]]; then
  "$PY" bench/device.py "$@" 2>&1 | tee -a "$LOG" | tee "$OUT/device.out"
  status=${PIPESTATUS[0]}
  sed -n '/^## exaslide device benchmark/,$p' "$OUT/device.out" >"$OUT/device.md"
else
  "$PY" bench/device.py "$@" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
fi
echo "== bench/device.sh: $(( $(date +%s) - start )) s, exit $status"
exit "$status"
