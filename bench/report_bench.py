"""How fast `dinolab report` reads a large store: direct SQL on SQLite against mlflow.search_runs.

The store and the timed paths are in dinolab.bench.report (also the `report` figure of `dinolab bench`);
this script prints every path's time.

    python bench/report_bench.py --runs 2000
    python bench/report_bench.py --runs 10000 --epochs 10 --skip-baseline
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dinolab.bench.report import N_GRIDS, build_store, time_paths  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="trial runs to create (default 2000)")
    ap.add_argument("--epochs", type=int, default=10, help="per-epoch history rows per metric (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of each fast timing (best is shown)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not time mlflow.search_runs (slow at 10k runs)")
    ap.add_argument("--keep", help="write the store here instead of a temporary folder")
    args = ap.parse_args(argv)

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="dinolab-report-bench-"))
    store = build_store(tmp, args.runs, args.epochs)
    print(f"store: {store.n_runs} runs ({sum(len(g.trials) for g in store.grids)} trials, {N_GRIDS} grids) written in "
          f"{store.build_s:.1f} s, {store.db.stat().st_size / 2**20:.0f} MiB: {store.db}")
    results = time_paths(store, repeat=args.repeat, baseline=not args.skip_baseline,
                         on_result=lambda name, n, s: print(f"  {name:<34} {min(s):7.2f} s", flush=True))
    print()
    print("| path | runs | seconds | runs/s |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        sec = min(r["seconds"])
        print(f"| {name} | {r['runs']} | {sec:.2f} | {r['runs'] / sec:,.0f} |")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
