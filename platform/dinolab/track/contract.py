"""The tracking contract: every name a dinolab run carries in MLflow, defined here and nowhere else.

Trials, the sweep, reports, dashboards, bench, backfill and the grid's column check import these names;
``tests/test_tracking_contract.py`` fails on a tag, metric or artifact literal anywhere else in the package,
and checks ``docs/contracts.md`` against ``contract_markdown()``.

A trial run (one per attempt chain of a trial; see ``dinolab.lifecycle``) carries:
- params: the flattened identity fields of its config (``model.arch``, ``dino.teacher``, ..., ``train.seed``);
- tags: the ``dinolab.*`` tags below, ``dinolab.grid.<grid>`` = "1" per grid it serves, and
  ``runtime.<dotted key>`` per runtime field;
- metrics: per-epoch metrics at step = epoch, their summaries (``final/ best/ last3/``) and the
  end-of-trial metrics at step = epochs done;
- artifacts: the resolved config, the environment, the teacher backbone's weights, attention maps.
A grid's parent run (one per grid, created by the sweep) carries the ``PARENT_*`` tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

# ----------------------------------------------------------------------------- tags of a trial run

TRIAL_ID = "dinolab.trial_id"  # the trial's id (config/identity.py): what identifies a trial's runs
CONFIG_HASH = "dinolab.config_hash"  # finds a trial whose data (and so whose id) is absent here
DATA_FINGERPRINT = "dinolab.data_fingerprint"
METHOD_VERSION = "dinolab.method_version"
ID_SCHEME = "dinolab.id_scheme"  # which trial-id scheme made TRIAL_ID (config/identity.py; dinolab migrate moves runs on)
PREVIOUS_TRIAL_IDS = "dinolab.previous_trial_ids"  # ids a migrated run had under earlier schemes
VERSION = "dinolab.version"
GIT_COMMIT = "dinolab.git_commit"
GIT_DIRTY = "dinolab.git_dirty"  # "true" | "false" | "unknown"
TORCH = "dinolab.torch"
CUDA = "dinolab.cuda"
HOST = "dinolab.host"
DEVICE = "dinolab.device"  # cpu | cuda | ...
HEARTBEAT = "dinolab.heartbeat"  # unix time of the last epoch (or start)
ATTEMPTS = "dinolab.attempts"  # how many times the run was opened (1 + resumes)
EPOCHS_DONE = "dinolab.epochs_done"
WORLD_SIZE = "dinolab.world_size"  # workers of a multi-worker trial
NODE = "dinolab.node"  # the Ray node it runs on, its IP, and every node it ran on (comma list in order)
NODE_IP = "dinolab.node_ip"
NODES = "dinolab.nodes"
COLLAPSED = "dinolab.collapsed"  # "true" | "false", set when the trial finishes
COLLAPSE_REASON = "dinolab.collapse_reason"
FAILURE_REASON = "dinolab.failure_reason"  # why a run FAILED or was KILLED
PREVIOUS_FAILURE = "dinolab.previous_failure"  # a failure a retry continued past
SUPERSEDED = "dinolab.superseded"  # "true": replaced by a newer run of the trial (never current)
SUPERSEDED_REASON = "dinolab.superseded_reason"
EARLY_STOPPED = "dinolab.early_stopped"  # "true": KILLED by the ASHA scheduler, done for its search
GRIDS = "dinolab.grids"  # comma list of the grids the run serves
GRID_PREFIX = "dinolab.grid."  # dinolab.grid.<grid> = "1"
RUNTIME_PREFIX = "runtime."  # runtime.<dotted key> = str(value) for every runtime field

# Tags a resumed run rewrites (where and from what code this attempt runs); the others stay as first written.
RESUME_PREFIXES = (GRID_PREFIX, GRIDS, RUNTIME_PREFIX, GIT_COMMIT, GIT_DIRTY, HOST)

# ----------------------------------------------------------------------------- params

# A trial's params: its flattened identity fields as written (``model.arch``, ...), and the values it trained
# with after defaults (``resolved.<section>.<key>``, config/identity.py ``resolved_params``).
RESOLVED_PARAM_PREFIX = "resolved."

# ----------------------------------------------------------------------------- tags of a grid's parent run

PARENT_GRID = "dinolab.grid_parent"  # = <grid>: marks the grid's parent run
PARENT_GRID_NAME = "dinolab.grid"
PARENT_GRID_FILE = "dinolab.grid_file"
PARENT_TRIALS = "dinolab.trials"
PARENT_STORAGE = "dinolab.storage"
PARENT_PAPER_TABLE = "dinolab.paper_table"
PARENT_COUNT_PREFIX = "dinolab.trials_"  # dinolab.trials_<state> = how many trials ended in that state

# ----------------------------------------------------------------------------- MLflow's own tags that dinolab sets or reads

MLFLOW_PARENT_RUN = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_LOGGED_IMAGES = "mlflow.loggedImages"
MLFLOW_USER = "mlflow.user"
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment tag: which view the UI opens it in
EXPERIMENT_KIND_TRAINING = "custom_model_development"  # the UI's model-training view (dinolab ui sets it)

# ----------------------------------------------------------------------------- metrics

# Per epoch (step = epoch). The CE objective alone logs teacher_entropy and kl; knn_top1 every eval.knn_every.
LOSS = "loss"
TEACHER_ENTROPY = "teacher_entropy"
KL = "kl"
LR = "lr"
WEIGHT_DECAY = "weight_decay"
MOMENTUM = "momentum"
TEACHER_TEMP = "teacher_temp"
IMAGES_PER_S = "images_per_s"
KNN_TOP1 = "knn_top1"
# imagefolder only: training images that failed to decode that epoch and were replaced by the next one
# (more than 1% of the epoch's reads fails the run).
UNREADABLE_IMAGES = "unreadable_images"
PER_EPOCH_METRICS = (LOSS, TEACHER_ENTROPY, KL, LR, WEIGHT_DECAY, MOMENTUM, TEACHER_TEMP, IMAGES_PER_S, KNN_TOP1,
                     UNREADABLE_IMAGES)

# Once, at the end of the trial (step = epochs done).
LINEAR_TOP1 = "linear_top1"
LINEAR_VAL_TOP1 = "linear_val_top1"  # the linear probe's best validation top-1 (the one that picked its lr)
KNN_TOP1_RANDOM_INIT = "knn_top1_random_init"  # the network at random init: the baseline
THROUGHPUT = "throughput_images_per_s"
WALL_TIME_S = "wall_time_s"
TRAIN_SECONDS = "train_seconds"
LOOP_WALL_S = "loop_wall_s"
PEAK_RSS_MB = "peak_rss_mb"
CUDA_PEAK_MB = "cuda_peak_mb"  # 0 on CPU
CPU_HOURS = "cpu_hours"
GPU_HOURS = "gpu_hours"
EPOCHS_DONE_METRIC = "epochs_done"
FINAL_METRICS = (
    KNN_TOP1, LINEAR_TOP1, LINEAR_VAL_TOP1, KNN_TOP1_RANDOM_INIT, THROUGHPUT, WALL_TIME_S, TRAIN_SECONDS, LOOP_WALL_S,
    PEAK_RSS_MB, CUDA_PEAK_MB, CPU_HOURS, GPU_HOURS, EPOCHS_DONE_METRIC,
)

# At the end of the trial when its data set has object masks, or later by ``dinolab backfill``.
ATTN_JACCARD_BEST_HEAD = "attn_jaccard_best_head"
ATTN_JACCARD_MEAN_HEAD = "attn_jaccard_mean_head"
ATTENTION_METRICS = (ATTN_JACCARD_BEST_HEAD, ATTN_JACCARD_MEAN_HEAD)


def random_init_key(metric: str) -> str:
    """``m_random_init``: an end-of-trial metric measured on the network at random init."""
    return f"{metric}_random_init"


def is_random_init(metric: str) -> bool:
    """A metric of the untrained network (a report's baseline column: no effect, no collapse mark)."""
    return metric.endswith(random_init_key(""))


ATTENTION_RANDOM_INIT = tuple(random_init_key(m) for m in ATTENTION_METRICS)

# What a row's cost reads (report) and what a grid may use as a report column (config/grid.py).
COST_METRICS = (THROUGHPUT, WALL_TIME_S, CPU_HOURS, GPU_HOURS, PEAK_RSS_MB, CUDA_PEAK_MB)
COLUMN_METRICS = tuple(dict.fromkeys(PER_EPOCH_METRICS + FINAL_METRICS + ATTENTION_METRICS + ATTENTION_RANDOM_INIT))

# Summaries of each per-epoch metric m, logged when the trial finishes (reports never read histories).
SUMMARY_LAST_K = 3
LOWER_IS_BETTER = frozenset({LOSS, KL})  # best/ is the min of these, the max of the others


def final_key(metric: str) -> str:
    """``final/m``: the last value of per-epoch metric m."""
    return f"final/{metric}"


def best_key(metric: str) -> str:
    """``best/m``: max over epochs (min for ``LOWER_IS_BETTER``)."""
    return f"best/{metric}"


def last_key(metric: str, k: int = SUMMARY_LAST_K) -> str:
    """``last<k>/m``: mean of the last k values."""
    return f"last{k}/{metric}"


def logged_metrics() -> tuple[str, ...]:
    """Every metric key a finished trial may carry."""
    summaries = tuple(f(m) for m in PER_EPOCH_METRICS for f in (final_key, best_key, last_key))
    return COLUMN_METRICS + summaries


# ----------------------------------------------------------------------------- artifacts

CONFIG_ARTIFACT = "config.yaml"  # the resolved config (also written into the trial folder)
ENVIRONMENT_ARTIFACT = "environment.txt"  # pip freeze of the interpreter that trained
WEIGHTS_DIR = "weights"
WEIGHTS_FILE = "teacher_backbone.pt"  # the teacher backbone's final state_dict (also <trial folder>/final/)
WEIGHTS_ARTIFACT = f"{WEIGHTS_DIR}/{WEIGHTS_FILE}"
ATTENTION_IMAGE = "attention/cls_maps"  # an MLflow image key (last-block [CLS] attention maps)
MLFLOW_IMAGES_DIR = "images"  # where MLflow's log_image puts the ATTENTION_IMAGE files
DASHBOARD_DIR = "dashboard"  # on the grid's parent run: <grid>.html

# ----------------------------------------------------------------------------- the run record

RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")  # MLflow's; lifecycle.TrialState reads them


@dataclass
class RunRecord:
    """One run as dinolab reads it (from the MLflow client or a row of a report frame)."""

    run_id: str
    experiment_id: str
    status: str  # one of RUN_STATUSES
    start_time: int  # ms
    end_time: Optional[int] = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric (the sweep's live view)

    @property
    def trial_id(self) -> str:
        return self.tags.get(TRIAL_ID, "")

    @property
    def superseded(self) -> bool:
        return is_true(self.tags.get(SUPERSEDED))

    @property
    def early_stopped(self) -> bool:
        return is_true(self.tags.get(EARLY_STOPPED))

    @property
    def collapsed(self) -> bool:
        return is_true(self.tags.get(COLLAPSED))

    @property
    def grids(self) -> set[str]:
        return tag_grids(self.tags)

    @property
    def heartbeat(self) -> Optional[float]:
        try:
            return float(self.tags[HEARTBEAT])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def epochs_done(self) -> str:
        return self.tags.get(EPOCHS_DONE, "")

    @property
    def reason(self) -> str:
        return self.tags.get(FAILURE_REASON, "")

    @property
    def collapse_reason(self) -> str:
        return self.tags.get(COLLAPSE_REASON, "")

    @classmethod
    def of_row(cls, row) -> "RunRecord":
        """From a row of a report frame (``report.runs.load_runs``: ``run_id``, ``status``, ``tags.<key>``, ...)."""
        tags = {k[5:]: v for k, v in row.items() if k.startswith("tags.") and isinstance(v, str)}
        return cls(str(row.get("run_id")), str(row.get("experiment_id")), str(row.get("status")), 0, None, tags)

    @classmethod
    def of(cls, run) -> "RunRecord":
        """From an ``mlflow.entities.Run``."""
        info = run.info
        return cls(info.run_id, info.experiment_id, info.status, int(info.start_time or 0), info.end_time, dict(run.data.tags),
                   dict(run.data.metrics))


def is_true(value) -> bool:
    return isinstance(value, str) and value.lower() == "true"


def tag_grids(tags: dict[str, str]) -> set[str]:
    """The grids a run serves: ``dinolab.grid.<name>`` tags and the ``dinolab.grids`` list."""
    grids = {k[len(GRID_PREFIX):] for k, v in tags.items() if k.startswith(GRID_PREFIX) and v == "1"}
    grids.update(g for g in (tags.get(GRIDS) or "").split(",") if g)
    return grids


def current_runs(rows: Iterable[tuple[str, str, int, bool]]) -> dict[str, str]:
    """The current run of each trial: ``{key: run id}`` from ``(key, run id, start ms, superseded)`` rows.

    The one rule: a trial's current run is its newest run (start time, then run id) not tagged superseded.
    """
    best: dict[str, tuple[int, str]] = {}
    for key, run_id, start, superseded in rows:
        if superseded or not key:
            continue
        rank = (start, run_id)
        if key not in best or rank > best[key]:
            best[key] = rank
    return {key: rank[1] for key, rank in best.items()}


def current_run(records: Iterable[RunRecord]) -> Optional[RunRecord]:
    """The current run (``current_runs``' rule) among one trial's runs, or None."""
    by_id = {r.run_id: r for r in records}
    chosen = current_runs(("t", r.run_id, r.start_time, r.superseded) for r in by_id.values())
    return by_id[chosen["t"]] if chosen else None


# ----------------------------------------------------------------------------- docs/contracts.md

def _named(select) -> tuple[str, ...]:
    g = globals()
    return tuple(v for n, v in g.items() if n.isupper() and isinstance(v, str) and select(n, v))


def trial_tags() -> tuple[str, ...]:
    """Every fixed ``dinolab.*`` tag name of a trial run (not the ``GRID_PREFIX`` / ``RUNTIME_PREFIX`` families)."""
    return _named(lambda n, v: v.startswith("dinolab.") and not n.startswith("PARENT") and not n.endswith("PREFIX"))


def is_trial_tag(key: str) -> bool:
    """Whether the contract names tag ``key`` of a trial run (MLflow's own ``mlflow.*`` tags included)."""
    mlflow_tags = _named(lambda n, v: n.startswith("MLFLOW_"))
    return key in trial_tags() + mlflow_tags or key.startswith((GRID_PREFIX, RUNTIME_PREFIX))


def contract_markdown() -> str:
    """The "What a trial records in MLflow" section of docs/contracts.md (a test keeps the two equal)."""
    tags = trial_tags()
    parent = _named(lambda n, v: n.startswith("PARENT") and not n.endswith("PREFIX"))
    mlflow_tags = _named(lambda n, v: n.startswith("MLFLOW_"))

    def names(xs) -> str:
        return ", ".join(f"`{x}`" for x in xs)

    return "\n".join([
        "## What a trial records in MLflow (the report reads these)",
        "Generated from `platform/dinolab/track/contract.py` (the only place these names are written; "
        "`tests/test_tracking_contract.py` checks this section against it).",
        "- params: flattened identity fields as written (`model.arch`, `dino.teacher`, ..., `train.seed`), and "
        f"`{RESOLVED_PARAM_PREFIX}<dotted key>`: the values the trial trained with after defaults.",
        f"- tags: {names(tags)}; `{GRID_PREFIX}<grid>` = \"1\" for each grid using the trial; "
        f"`{RUNTIME_PREFIX}<dotted key>` for every runtime field. MLflow's: {names(mlflow_tags)}.",
        f"- per-epoch metrics (step = epoch): {names(PER_EPOCH_METRICS)} (`{KNN_TOP1}` every eval.knn_every epochs "
        f"and the last; `{UNREADABLE_IMAGES}` for an imagefolder only: images that failed to decode, replaced by the "
        "next; more than 1% of an epoch's reads fails the run).",
        f"- summaries of each per-epoch metric m: `{final_key('m')}`, `{best_key('m')}` (max; min for "
        f"{names(sorted(LOWER_IS_BETTER))}), `{last_key('m')}` (mean of the last {SUMMARY_LAST_K} values).",
        f"- end-of-trial metrics (step = epochs done): {names(FINAL_METRICS)}; with object masks or by "
        f"`dinolab backfill`: {names(ATTENTION_METRICS)} (and at random init: {names(ATTENTION_RANDOM_INIT)}).",
        f"- report columns may use: {names(COLUMN_METRICS)}; a row's cost reads {names(COST_METRICS)}.",
        f"- artifacts: `{CONFIG_ARTIFACT}` (resolved), `{ENVIRONMENT_ARTIFACT}` (pip freeze), `{WEIGHTS_ARTIFACT}`, "
        f"image `{ATTENTION_IMAGE}`.",
        f"- a grid's parent run: tags {names(parent)}, `{PARENT_COUNT_PREFIX}<state>` (trials per state); "
        f"artifact `{DASHBOARD_DIR}/<grid>.html`.",
        "- the current run of a trial: its newest run not tagged superseded (`current_runs`).",
        "",
    ])
