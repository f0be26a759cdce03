#!/usr/bin/env bash
# The one prepared GPU check: on a machine with CUDA, run the CUDA tests, the benchmark on the
# GPU (fp32 and fp16, with and without CUDA graphs, the node over DDS where rclpy is there) and
# CamVid val accuracy in fp16 and fp32; write every result as JSON, plus summary.json, into
# the folder given ($1, else $OUT, else out/device_check). Under 8 minutes on one GPU.
# On a machine without CUDA it is a dry run: it says what it would run, and exits 0.
#
#   scripts/device_check.sh                     # results in out/device_check/
#   PYTHON=/opt/torch/.venv/bin/python3 SEG_PERCEPTION_SHARED=/data/shared scripts/device_check.sh /tmp/gpu
#
# Needs: a Python with torch (CUDA), torchvision, numpy, OpenCV and PyYAML (the rest of the
# package's requirements only for the parts that use them: rclpy for the node over DDS, pytest
# for the tests); the shared data (SEG_PERCEPTION_SHARED, default ../shared: the torch hub
# cache with the ESPNet weights and CamVid val).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${OUT:-$here/out/device_check}}"
python="${PYTHON:-python3}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export SEG_PERCEPTION_SHARED="${SEG_PERCEPTION_SHARED:-$(cd "$here/.." && pwd)/shared}"
export TORCH_HOME="${TORCH_HOME:-$SEG_PERCEPTION_SHARED/torch_home}"
export SEG_PERCEPTION_CACHE="${SEG_PERCEPTION_CACHE:-$out/cache}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
camvid="$SEG_PERCEPTION_SHARED/data/camvid"
cli=("$python" -m seg_perception.cli)
bench_core=(bench --device cuda --sizes 1280x720 --camera-size 1280x720 --frames 200
            --warmup 20 --skip naive,transport,node,accuracy)

steps=(
  "tests: pytest -m cuda (the CUDA back end against the CPU one, batches, graphs)"
  "bench fp32: ${bench_core[*]} --precision fp32"
  "bench fp16: ${bench_core[*]} --precision fp16"
  "bench fp16 + CUDA graph: ${bench_core[*]} --precision fp16 --cuda-graph"
  "bench fp32 + CUDA graph: ${bench_core[*]} --precision fp32 --cuda-graph"
  "node over DDS, fp16 (only where rclpy imports): bench --device cuda --precision fp16 --skip naive,accuracy --sizes 1280x720"
  "accuracy: eval espnet-camvid on CamVid val, fp32 and fp16"
)

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    2>/dev/null; then
  echo "device_check: no CUDA device for $python: dry run, nothing measured. On a GPU it runs:"
  for step in "${steps[@]}"; do echo "  - $step"; done
  echo "  and writes JSON under $out (one file per step, and summary.json)"
  exit 0
fi

mkdir -p "$out"
log() { echo "[device_check $(date +%H:%M:%S)] $*"; }
status=0
run() {  # name, command...: its exit code is recorded, a failure does not stop the others
  local name="$1"; shift
  log "$name"
  if ! "$@" >"$out/$name.log" 2>&1; then
    log "$name FAILED (see $out/$name.log)"; status=1
  fi
}

"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" \
  >"$out/device.txt" 2>&1
run tests "$python" -m pytest -q -m cuda -p no:cacheprovider "$here/test/test_pipeline.py" \
  "$here/test/test_vehicle_ahead.py" --junitxml "$out/tests.xml"
run bench-fp32 "${cli[@]}" "${bench_core[@]}" --precision fp32 --json "$out/bench-fp32.json"
run bench-fp16 "${cli[@]}" "${bench_core[@]}" --precision fp16 --json "$out/bench-fp16.json"
run bench-fp16-graph "${cli[@]}" "${bench_core[@]}" --precision fp16 --cuda-graph \
  --json "$out/bench-fp16-graph.json"
run bench-fp32-graph "${cli[@]}" "${bench_core[@]}" --precision fp32 --cuda-graph \
  --json "$out/bench-fp32-graph.json"
if "$python" -c "import rclpy" 2>/dev/null; then
  run bench-node-fp16 "${cli[@]}" bench --device cuda --precision fp16 --sizes 1280x720 \
    --camera-size 1280x720 --skip naive,accuracy --json "$out/bench-node-fp16.json"
else
  log "node over DDS: skipped (rclpy does not import here)"
fi
for precision in fp32 fp16; do
  run "eval-$precision" "${cli[@]}" eval --model espnet-camvid --device cuda \
    --precision "$precision" --images "$camvid/val" --labels "$camvid/valannot" \
    --no-report --no-progress -o "$out/eval-$precision"
done

"$python" - "$out" <<'EOF'
"""summary.json: the figures the README quotes, and the targets."""
import json, sys
from pathlib import Path

out = Path(sys.argv[1])

def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None

summary = {"device": (out / "device.txt").read_text().strip()}
for name in ("fp32", "fp16", "fp16-graph", "fp32-graph", "node-fp16"):
    report = load(f"bench-{name}.json")
    if report:
        summary[name] = {k: report.get(k) for k in (
            "pipeline_ms", "forward_ms", "pipeline_fps", "pipeline_over_forward",
            "node_e2e_ms_p50")}
        node = (report.get("node") or {}).get("1280x720")
        if node:
            summary[name]["node_fps_lockstep"] = node["fps_out"]
evals = {p: load(f"eval-{p}/eval.json") for p in ("fp32", "fp16")}
if all(evals.values()):
    summary["camvid_val_miou"] = {p: e["mean_iou"] for p, e in evals.items()}
    summary["fp16_miou_minus_fp32"] = evals["fp16"]["mean_iou"] - evals["fp32"]["mean_iou"]
fp16 = [v for k, v in summary.items() if k.startswith("fp16") and isinstance(v, dict)]
summary["targets"] = {
    "pipeline_fps_fp16_720p_min": 300,
    "pipeline_fps_fp16_720p": max((v.get("pipeline_fps") or 0 for v in fp16), default=None),
    "node_fps_min": 100,
    "node_fps": (summary.get("node-fp16") or {}).get("node_fps_lockstep"),
    "fp16_miou_within": 0.005, "fp16_miou_delta": summary.get("fp16_miou_minus_fp32"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
log "done: $out (exit $status)"
exit $status
