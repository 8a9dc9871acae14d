#!/usr/bin/env bash
# Esper's CUDA path, checked on a machine with a GPU, in one command:
#   1. the device and precision tests with their CUDA cases (tests/tolaria/test_device.py, test_precision.py);
#   2. a short grown run on cuda in each precision, whose report must name the GPU and the precision;
#   3. benchmarks/precision.py on cuda (bf16 against fp32, paired by seed), on the default host and a wide one.
#
# Python: $PYTHON (default python3). Where that Python lacks Esper's own dependencies and no index can be
# reached (the device machines' image), deploy/gpu/fetch_wheels.sh fetches them into .whl/ beforehand and
# this script installs them into a scratch folder; Esper itself is put on PYTHONPATH from libs/*/src and
# services/*/src when it is not installed. Logs and reports go to $OUT (default /tmp/esper-gpu-check).
# Stops at the first failure, saying which step failed; a machine without CUDA stops at once.
# DEVICE=cpu runs the same steps on the CPU: a dry run of this script's plumbing on any machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-/tmp/esper-gpu-check}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
step() { echo "== gpu-check: $*" | tee -a "$OUT_DIR/steps.log"; }
fail() { echo "gpu-check FAILED: $*" | tee -a "$OUT_DIR/steps.log" >&2; exit 1; }

if ! "$PY" -c "import msgspec, pydantic, fastapi, redis, mnist1d" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  site=/tmp/esper-gpu-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || fail "installing the wheels in .whl"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import esper.tolaria" 2>/dev/null; then
  src=$(ls -d "$PWD"/libs/*/src "$PWD"/services/*/src | paste -sd:)
  export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - "$DEVICE" <<'EOF' | tee "$OUT_DIR/env.txt"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if sys.argv[1] != "cpu":
    if not torch.cuda.is_available():
        sys.exit("gpu-check: torch sees no CUDA device")
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported(including_emulation=False))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

step "device and precision tests"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/tolaria/test_device.py tests/tolaria/test_precision.py \
  2>&1 | tee "$OUT_DIR/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "tests (see tests.log)"

for precision in fp32 bf16; do
  step "a grown run on $DEVICE, $precision"
  run="$OUT_DIR/run-$precision"
  rm -rf "$run"
  "$PY" -m esper.cli.main train --device "$DEVICE" --precision "$precision" --epochs 4 --max-train-samples 1000 \
    --out "$run" --no-progress >"$OUT_DIR/run-$precision.log" 2>&1 || fail "esper train, $precision (see run-$precision.log)"
  "$PY" - "$run/report.json" "$precision" "$DEVICE" <<'EOF' || fail "the $precision run's report"
import json, sys
report = json.load(open(sys.argv[1]))
assert report["device"].startswith(sys.argv[3]), report["device"]
assert report["precision"] == sys.argv[2], report["precision"]
print("gpu-check:", report["device"], report["precision"], "test accuracy", report["final_test_accuracy"],
      f"{report['wall_seconds']:.1f} s")
EOF
done

step "bf16 against fp32 on $DEVICE: the default host, then a wide one"
"$PY" benchmarks/precision.py --device "$DEVICE" --seeds 3 --epochs 20 >"$OUT_DIR/precision-default.log" 2>&1 \
  || fail "benchmarks/precision.py (see precision-default.log)"
tail -n 2 "$OUT_DIR/precision-default.log" | head -n 1
"$PY" benchmarks/precision.py --device "$DEVICE" --seeds 3 --epochs 10 --host-channels 128 \
  >"$OUT_DIR/precision-wide.log" 2>&1 || fail "benchmarks/precision.py --host-channels 128 (see precision-wide.log)"
tail -n 2 "$OUT_DIR/precision-wide.log" | head -n 1
step "passed"
