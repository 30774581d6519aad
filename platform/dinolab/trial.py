"""One trial, end to end: check data, open (or reopen) its MLflow run, train, evaluate, record.

This is the adapter between ``train(cfg, reporter)`` and MLflow; ``dinolab run`` calls it
directly and the sweep calls it inside each Ray Tune trial. A trial lives in
``<storage>/trials/<trial id>/`` with its checkpoints and a ``trial.json`` naming its MLflow run,
so a retried or relaunched trial continues the same run and logs only the epochs after its
checkpoint. Whether it continues, starts fresh or supersedes runs is ``dinolab.lifecycle``'s decision;
this module trains and records.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from dinolab import __version__, lifecycle
from dinolab.config import (
    ID_SCHEME, METHOD_VERSION, ExperimentConfig, config_hash, dump_config, flatten, identity_dict, resolved_params, runtime_dict,
    trial_id,
)
from dinolab.home import default_storage, redact_uri, resolve_tracking_uri, trial_dir
from dinolab.track import contract

log = logging.getLogger(__name__)



@dataclass
class TrialOutcome:
    trial_id: str
    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    final: dict = field(default_factory=dict)
    reason: str = ""
    workdir: Optional[Path] = None


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, str]:
    """(commit, dirty) of the checkout dinolab runs from, or ("unknown", "unknown")."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "unknown", "true" if dirty else "false") if commit else ("unknown", "unknown")
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def environment_text() -> str:
    """``pip freeze`` of the running interpreter, from package metadata (no subprocess)."""
    from importlib import metadata

    lines = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return "\n".join(lines) + "\n"


def summaries(history: dict[str, list[float]], last_k: int = contract.SUMMARY_LAST_K) -> dict[str, float]:
    """final/, best/ and last<k>/ value of every per-epoch metric: reports never read histories."""
    out = {}
    for name, values in history.items():
        if name == "epoch" or not values:
            continue
        out[contract.final_key(name)] = values[-1]
        out[contract.best_key(name)] = min(values) if name in contract.LOWER_IS_BETTER else max(values)
        tail = values[-last_k:]
        out[contract.last_key(name, last_k)] = sum(tail) / len(tail)
    return out


def cost_hours(cfg: ExperimentConfig, wall_s: float, device_name: str) -> dict[str, float]:
    """{"cpu_hours", "gpu_hours"}: ``wall_s`` (the loop's wall time) times the CPUs and GPUs the trial held.

    GPUs: ``resources.gpus_per_worker`` per worker (a fraction when Ray packs trials on a card), or one whole
    card per worker when the trial ran on CUDA without asking for any (``dinolab run`` on a GPU machine:
    nothing shared the card); 0 on the CPU.
    """
    r = cfg.resources
    hours = wall_s / 3600.0
    gpus = (r.gpus_per_worker or 1.0) * r.workers if device_name.startswith("cuda") else 0.0
    return {contract.CPU_HOURS: hours * (cfg.train.threads or r.cpus_per_worker) * r.workers, contract.GPU_HOURS: hours * gpus}


def trial_identity(cfg: ExperimentConfig) -> tuple[str, str]:
    """(trial id, data fingerprint)."""
    from dinolab.data.datasets import data_fingerprint

    fp = data_fingerprint(cfg.data)
    return trial_id(cfg, fp), fp


def trial_tags(cfg: ExperimentConfig, tid: str, fingerprint: str, grids: Iterable[str] = ()) -> dict[str, str]:
    import torch

    commit, dirty = git_state()
    tags = {
        contract.TRIAL_ID: tid,
        contract.CONFIG_HASH: config_hash(cfg),
        contract.DATA_FINGERPRINT: fingerprint,
        contract.METHOD_VERSION: str(METHOD_VERSION),
        contract.ID_SCHEME: str(ID_SCHEME),
        contract.VERSION: __version__,
        contract.GIT_COMMIT: commit,
        contract.GIT_DIRTY: dirty,
        contract.TORCH: torch.__version__,
        contract.CUDA: str(torch.version.cuda),
        contract.HOST: os.uname().nodename,
    }
    grids = sorted(set(grids))
    for g in grids:
        tags[contract.GRID_PREFIX + g] = "1"
    if grids:
        tags[contract.GRIDS] = ",".join(grids)
    for key, value in flatten(runtime_dict(cfg)).items():
        tags[contract.RUNTIME_PREFIX + key] = str(value)
    return tags


def run_trial(
    cfg: ExperimentConfig,
    *,
    tracking_uri: Optional[str] = None,
    storage: Optional[Path] = None,
    parent_run_id: Optional[str] = None,
    grids: Iterable[str] = (),
    fresh: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    raise_errors: bool = False,
    on_epoch_end: Optional[Callable[[int, dict], None]] = None,
    train_fn: Optional[Callable[..., "TrainResult"]] = None,
    decision: Optional["lifecycle.Decision"] = None,
) -> TrialOutcome:
    """Run (or continue) one trial and record it as one MLflow run.

    tracking_uri: the store to record in (default: cfg.tracking.uri, $MLFLOW_TRACKING_URI, the home's store).
    fresh: start over even if an unfinished checkpoint exists (the old runs are tagged superseded).
    decision: ``lifecycle.decide``'s RESUME or FRESH, taken by the caller under the trial's claim (the sweep);
        default: decided here (resume the run this trial's folder holds, else start fresh).
    raise_errors: re-raise unexpected exceptions after marking the run FAILED (Ray retries them).
    on_epoch_end: called after each epoch's metrics and checkpoint are written (a sweep reports to Ray Tune).
    train_fn: replaces ``dinolab.train.loop.train`` with the same signature (the sweep's multi-worker group).
    """
    from dinolab.config.checks import check_device_here
    from dinolab.data.datasets import check_training_data
    from dinolab.track.mlflow_store import MLflowReporter, client_for, get_or_create_experiment, reopen_run, start_run
    from dinolab.train.checkpoint import UnsafeCheckpoint
    from dinolab.train.loop import NonFiniteLoss, TrainingCancelled, train

    # Bad data or a device this machine lacks stops here, before anything is written to MLflow.
    check_device_here(cfg.train.device)
    check_training_data(cfg)
    tid, fingerprint = trial_identity(cfg)
    workdir = trial_dir(storage or default_storage(), tid)
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri)
    client = client_for(uri)
    if cfg.tracking.uri and redact_uri(cfg.tracking.uri) != cfg.tracking.uri:
        # runtime.tracking.uri tag, config.yaml: never the password (the client above keeps it)
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": redact_uri(cfg.tracking.uri)})})
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment)
    tags = trial_tags(cfg, tid, fingerprint, grids)

    if decision is None:
        from dinolab.sweep.store import trial_runs

        runs = trial_runs(client, [tid])[tid]
        decision = lifecycle.decide(runs, lifecycle.read_folder(workdir), workdir, reuse=False, rerun=fresh)
    if decision.action == lifecycle.REUSE:
        raise ValueError(f"trial {tid}: run_trial trains; a reused run ({decision.run.run_id}) is the caller's to report")
    lifecycle.prepare(client, decision, workdir)
    if decision.action == lifecycle.RESUME:
        run_id = decision.run.run_id
        reopen_run(client, run_id)
        reporter = MLflowReporter(client, run_id)
        reporter.set_tags({k: v for k, v in tags.items() if k.startswith(contract.RESUME_PREFIXES)})
    else:
        run_id = start_run(client, experiment_id, cfg.tracking.run_name or cfg.name, tags, parent_run_id)
        reporter = MLflowReporter(client, run_id)
        reporter.log_params({**flatten(identity_dict(cfg)), **resolved_params(cfg)})  # as written, and as trained
        reporter.log_text(dump_config(cfg), contract.CONFIG_ARTIFACT)
        reporter.log_text(environment_text(), contract.ENVIRONMENT_ARTIFACT)
    attempts = lifecycle.begin_attempt(workdir, tid, run_id, redact_uri(uri))
    (workdir / contract.CONFIG_ARTIFACT).write_text(dump_config(cfg))
    log.info("trial %s -> MLflow run %s (%s), checkpoints in %s", tid, run_id, redact_uri(uri), workdir)

    device_name = "cuda" if cfg.train.device == "auto" and _cuda() else cfg.train.device
    reporter.set_tags({contract.DEVICE: device_name, contract.HEARTBEAT: str(int(time.time())), contract.ATTEMPTS: str(attempts)})

    def heartbeat(epoch: int, metrics: dict) -> None:
        reporter.set_tags({contract.HEARTBEAT: str(int(time.time())), contract.EPOCHS_DONE: str(epoch + 1)})
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)

    wall = time.time()
    try:
        result = (train_fn or train)(cfg, reporter, workdir=workdir, resume=True, should_stop=should_stop, on_epoch_end=heartbeat)
    except NonFiniteLoss as e:
        return _close(client, reporter, workdir, tid, run_id, "FAILED", f"non-finite loss: {e}")
    except TrainingCancelled as e:
        return _close(client, reporter, workdir, tid, run_id, "KILLED", str(e))
    except UnsafeCheckpoint as e:  # a retry would refuse it again: FAILED, not re-raised
        return _close(client, reporter, workdir, tid, run_id, "FAILED", str(e))
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised or returned
        outcome = _close(client, reporter, workdir, tid, run_id, "FAILED", f"{type(e).__name__}: {e}")
        if raise_errors or not isinstance(e, Exception):
            raise
        return outcome

    from dinolab.eval.collapse import detect_collapse

    final = dict(result.final)
    final[contract.WALL_TIME_S] = time.time() - wall + float(decision.folder.get(contract.WALL_TIME_S, 0.0))
    final[contract.EPOCHS_DONE_METRIC] = result.epochs_done
    final.update(cost_hours(cfg, final.get(contract.LOOP_WALL_S, final[contract.WALL_TIME_S]), device_name))
    collapsed, reason = detect_collapse(result.history, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
    reporter.log_metrics({**summaries(result.history), **final}, step=result.epochs_done)
    reporter.set_tags({contract.COLLAPSED: "true" if collapsed else "false", contract.COLLAPSE_REASON: reason})
    weights = workdir / "final" / contract.WEIGHTS_FILE
    if weights.exists():
        reporter.log_artifact(weights, contract.WEIGHTS_DIR)
    return _close(client, reporter, workdir, tid, run_id, "FINISHED", "", final)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _close(client, reporter, workdir, tid, run_id, status, reason, final=None) -> TrialOutcome:
    from dinolab.track.mlflow_store import end_run

    if reason:
        reporter.set_tags({contract.FAILURE_REASON: reason[:4000]})
        log.warning("trial %s %s: %s", tid, status, reason)
    end_run(client, run_id, status)
    lifecycle.end_attempt(workdir, status, reason)
    return TrialOutcome(tid, run_id, status, final or {}, reason, workdir)
