"""Ablation grids on Ray Tune: plan against MLflow, claim trials with lock files, run what is missing.

Modules: ``locks`` (claim / parent / cancel files under the storage root), ``store`` (MLflow queries:
runs by trial id, parent run, grid tags, stale RUNNING runs), ``launcher`` (plan + Tuner),
``trainable`` (the Tune trial function), ``distributed`` (a multi-worker trial), ``cli``
(``dinolab sweep`` / ``dinolab status``). Ray and MLflow are imported inside functions.
"""

from .launcher import LaunchReport, Plan, cancel, format_plan, launch, load_sweep_grid, plan_grid

__all__ = ["LaunchReport", "Plan", "cancel", "format_plan", "launch", "load_sweep_grid", "plan_grid"]
