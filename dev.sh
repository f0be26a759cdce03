#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (once; re-runs skip what is done),
# then runs the task.  ./dev.sh demo   the main job (node + player over DDS, default model)
#                     ./dev.sh test   the whole test suite
#                     ./dev.sh shell  a shell inside the environment
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$candidate"; return
    fi
  done
  echo "dev.sh: Python 3.11 is required (the ROS 2 wheels are cp311)" >&2; exit 1
}

setup() {
  local stamp="$venv/.seg_perception-installed"
  local want
  want="$(cat requirements.txt setup.py | sha256sum | cut -c1-16)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  echo "dev.sh: setting up $venv (first run takes a few minutes)" >&2
  [[ -x "$venv/bin/python" ]] || "$(find_python)" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -r requirements.txt
  "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
}

setup
export PATH="$venv/bin:$PATH"
# Real data lives beside the checkout (never in it); pretrained weights come from its hub cache.
export SEG_PERCEPTION_SHARED="${SEG_PERCEPTION_SHARED:-$(cd "$here/.." && pwd)/shared}"
export TORCH_HOME="${TORCH_HOME:-$SEG_PERCEPTION_SHARED/torch_home}"
export SEG_PERCEPTION_CACHE="${SEG_PERCEPTION_CACHE:-$here/.cache}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"  # torch.jit deprecation notes

task="${1:-}"; shift || true
case "$task" in
  demo)  exec seg-perception demo "$@" ;;
  test)  ruff check . && exec python -m pytest "$@" ;;
  shell) exec "${SHELL:-bash}" ;;
  *) echo "usage: ./dev.sh demo|test|shell [args...]" >&2; exit 2 ;;
esac
