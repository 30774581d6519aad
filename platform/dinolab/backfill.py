"""``dinolab backfill ABLATION.yaml``: add a metric that did not exist when trials ran, computed
from each finished run's saved final weights (no retraining), logged into that same run.

Today's backfillable metric: ``attention`` (the last-block [CLS] attention maps as an MLflow image
and, where the data set knows object masks, ``attn_jaccard_best_head`` / ``attn_jaccard_mean_head``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch

from dinolab.config import ConfigError, build_config
from dinolab.home import resolve_tracking_uri
from dinolab.track.contract import ATTENTION_IMAGE, CONFIG_ARTIFACT, WEIGHTS_ARTIFACT
from dinolab.track.contract import ID_SCHEME as ID_SCHEME_TAG

log = logging.getLogger(__name__)

METRICS = ("attention",)


def _trained_backbone(client, run_id: str):
    """(config, teacher backbone with the run's final weights), from the run's artifacts."""
    import yaml

    from dinolab.migrate import recorded_config
    from dinolab.models.registry import build_backbone

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        scheme = int(client.get_run(run_id).data.tags.get(ID_SCHEME_TAG, "1"))
        recorded = recorded_config(yaml.safe_load(Path(cfg_path).read_text()), scheme)
        cfg = build_config(recorded, source=f"run {run_id} {CONFIG_ARTIFACT}")
        weights = client.download_artifacts(run_id, WEIGHTS_ARTIFACT, tmp)
        backbone = build_backbone(cfg.model, image_size=cfg.crops.global_size, drop_path_rate=0.0)
        backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return cfg, backbone.eval()


def backfill_attention(client, run_id: str) -> dict[str, float]:
    """Compute and log the attention metrics of one finished run; returns what was logged."""
    from dinolab.data.datasets import build_dataset
    from dinolab.data.multicrop import eval_transform
    from dinolab.eval.attention import evaluate_attention
    from dinolab.track.mlflow_store import MLflowReporter

    cfg, backbone = _trained_backbone(client, run_id)
    if not backbone.supports_attention:
        return {}
    test = build_dataset(cfg.data, "test", transform=eval_transform(cfg.eval_image_size))
    metrics, figure = evaluate_attention(backbone, test)
    reporter = MLflowReporter(client, run_id)
    epochs = int(cfg.train.epochs)
    if metrics:
        reporter.log_metrics(metrics, step=epochs)
    reporter.log_image(figure, ATTENTION_IMAGE, step=epochs)
    return metrics


def backfill_grid(path: str, metric: str = "attention", tracking_uri: Optional[str] = None, overrides: Iterable[str] = ()) -> dict[str, dict]:
    """Backfill ``metric`` on the current finished run of every trial of a grid: {run id: metrics}."""
    from dinolab.config.grid import load_grid
    from dinolab.sweep.store import current_run, open_client, trial_runs

    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: backfillable metrics are {', '.join(METRICS)}")
    from dinolab.sweep.store import store_exists
    from dinolab.track.check import check_tracking, uri_source

    grid = load_grid(path, overrides)
    uri = check_tracking(resolve_tracking_uri(tracking_uri), uri_source(tracking_uri))
    if not store_exists(uri):
        return {}  # no store, so no finished run (and opening it would create one)
    client = open_client(uri)
    ids = [t.trial_id for t in grid.trials]
    done = {}
    for tid, records in trial_runs(client, ids).items():
        rec = current_run(records)
        if rec is None or rec.status != "FINISHED":
            continue
        done[rec.run_id] = backfill_attention(client, rec.run_id)
        log.info("backfilled %s on run %s (trial %s): %s", metric, rec.run_id, tid, done[rec.run_id])
    return done
