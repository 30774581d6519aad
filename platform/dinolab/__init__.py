"""dinolab: ablation grids of self-supervised ViTs on Ray Tune, tracked in MLflow."""

__version__ = "0.1.0"
