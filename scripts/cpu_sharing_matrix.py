#!/usr/bin/env python3
"""How the CPU settings hold up on a shared computer: the table behind the node's defaults.

For each choice of torch/OpenCV threads and OpenMP wait policy, the network's forward time
(``seg-perception bench`` core part, default model, 1280x720) on a quiet machine, beside 1
and 2 busy processes (``python3 -c "while True: pass"``) and beside a second instance running
the same network with the same settings. Prints a table and writes JSON.

    python scripts/cpu_sharing_matrix.py --json cpu_sharing.json          # ~10 minutes
    python scripts/cpu_sharing_matrix.py --threads 1,2 --policies default,PASSIVE --frames 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = [sys.executable, "-c", "while True: pass"]
CONDITIONS = ("quiet", "1 busy", "2 busy", "2nd instance")


def bench_command(threads: int, frames: int, json_path: Path | None, model: str) -> list[str]:
    command = [sys.executable, "-m", "seg_perception.cli", "bench", "--model", model,
               "--skip", "naive,transport,node,accuracy,confidence", "--sizes", "1280x720",
               "--camera-size", "1280x720", "--frames", str(frames), "--warmup", "2",
               "--threads", str(threads)]
    return command + (["--json", str(json_path)] if json_path else [])


def environment(policy: str) -> dict[str, str]:
    """``default``: libgomp's own (an empty value stops the tools from choosing theirs;
    libgomp then warns once and uses its default); ``PASSIVE``/``ACTIVE``; ``SPIN<N>``: the
    default policy with GOMP_SPINCOUNT=N (spin that long, then sleep)."""
    env = dict(os.environ)
    env.pop("GOMP_SPINCOUNT", None)
    env["OMP_WAIT_POLICY"] = ""
    if policy.startswith("SPIN"):
        env["GOMP_SPINCOUNT"] = policy[4:]
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


def measure(threads: int, policy: str, condition: str, frames: int, model: str,
            workdir: Path) -> dict:
    """Forward and pipeline p50 (ms) of one bench run under ``condition``."""
    env = environment(policy)
    others: list[subprocess.Popen] = []
    if condition.endswith("busy"):
        others = [subprocess.Popen(BUSY) for _ in range(int(condition[0]))]
    elif condition == "2nd instance":
        # The same network with the same settings, running all the time.
        others = [subprocess.Popen(bench_command(threads, 100_000, None, model), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        time.sleep(15.0)  # it has loaded its model and infers
    out = workdir / f"t{threads}-{policy}-{condition.replace(' ', '_')}.json"
    try:
        subprocess.run(bench_command(threads, frames, out, model), env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    finally:
        for process in others:
            process.kill()
            process.wait()
    report = json.loads(out.read_text())
    return {"threads": threads, "omp_wait_policy": policy, "condition": condition,
            "forward_ms": report["forward_ms"], "pipeline_ms": report["pipeline_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--policies", default="default,PASSIVE,SPIN10000",
                        help="OpenMP wait policies: default, PASSIVE, ACTIVE, SPIN<count> "
                        "(default: default,PASSIVE,SPIN10000)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--model", default="espnet-cityscapes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu-sharing-") as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            for policy in args.policies.split(","):
                for condition in args.conditions.split(","):
                    row = measure(threads, policy, condition, args.frames, args.model,
                                  Path(tmp))
                    rows.append(row)
                    print(f"threads {threads} {policy:8} {condition:13} forward "
                          f"{row['forward_ms']:8.1f} ms  pipeline {row['pipeline_ms']:8.1f} ms",
                          flush=True)
    print("\nforward p50 ms        " + "".join(f"{c:>14}" for c in args.conditions.split(","))
          + "    worst/quiet")
    for threads in sorted({r["threads"] for r in rows}):
        for policy in args.policies.split(","):
            mine = {r["condition"]: r["forward_ms"] for r in rows
                    if r["threads"] == threads and r["omp_wait_policy"] == policy}
            worst = max(mine.values())
            print(f"{threads} thread(s), {policy:8}" + "".join(
                f"{mine[c]:14.1f}" for c in args.conditions.split(",")) +
                f"{worst / mine.get('quiet', worst):14.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
