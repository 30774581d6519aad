"""`dinolab bench`: the speed figures of the issue, each with its baseline measured in the same run.

Figures (one function each): ``gemm_*`` (large matmul rate), ``step_*`` (a DINO training step against its
FLOP-counted matrix products timed alone; step.py), ``augment_paper`` (fast multi-crop against the PIL
reference; augment.py, measuring code in bench/augment_bench.py), ``sweep`` (Ray Tune grid wall time against
the ideal; sweep.py), ``tracking`` (MLflow logging overhead per step; tracking.py), ``report`` (every table of
10,000 runs against mlflow.search_runs; report.py). runner.py runs them and keeps bench/results/<machine>.json;
markdown.py assembles BENCHMARKS.md from all result files. Torch, Ray and MLflow are imported by the figures.
"""

from .runner import FIGURE_NAMES, BenchOutcome, format_table, run_bench

__all__ = ["BenchOutcome", "FIGURE_NAMES", "format_table", "run_bench"]
