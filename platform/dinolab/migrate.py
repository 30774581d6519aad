"""``dinolab migrate``: carry a store over to the current trial-id scheme (``config.identity.ID_SCHEME``).

A store is the MLflow tracking store (runs tagged ``dinolab.trial_id``) plus the storage folder's
``trials/<trial id>/`` (checkpoints, ``trial.json``). When the way ids are derived changes, a relaunch
would find none of its finished trials; this command re-derives every run's id instead:

1. It refuses while a sweep holds a trial's claim lock or a grid's launch lock, then holds the claim
   of every trial folder it touches.
2. Each run records its scheme (tag ``dinolab.id_scheme``; none = 1). The chain ``STEPS`` takes it
   from there one step at a time: a step first recomputes the run's recorded id with that scheme's
   own hash, kept here frozen (a run whose recorded config does not give back its id is left alone
   and reported), then turns the recorded config into the next scheme's. The last config gives the
   new id and config hash with today's code. The next id change adds a step; it never edits one.
3. Before changing anything it writes a backup under ``<storage>/migrate-backup/<time>/``: every
   trial run's tags and params (JSON), a copy of a SQLite store, each touched ``trial.json``, and
   the plan.
4. It re-tags the runs (new ``dinolab.trial_id`` and ``dinolab.config_hash``, the old id kept in
   ``dinolab.previous_trial_ids``, ``dinolab.id_scheme``, the ``resolved.*`` params), and where
   several old ids now name one trial it keeps the newest finished run (else the newest) current and
   tags the others superseded (``dinolab.superseded``, as ``--rerun`` does). The current run's
   trial folder is renamed to the new id, so an unfinished trial resumes from its checkpoint.
5. ``<storage>/id_scheme.json`` records the scheme; a second run finds nothing to do.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from dinolab.config import ID_SCHEME, ExperimentConfig, config_hash, resolved_params, trial_id
from dinolab.config.identity import RESOLVED_PREFIX
from dinolab.home import redact_uri
from dinolab.track import contract

log = logging.getLogger(__name__)

SCHEME_TAG = contract.ID_SCHEME
PREVIOUS_TAG = contract.PREVIOUS_TRIAL_IDS
MARKER = "id_scheme.json"


class MigrateRefused(RuntimeError):
    """The store is in use (a claim or launch lock is held) or comes from a newer dinolab."""


# ----------------------------------------------------------------------------- the steps


def _sha(obj, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def _v1_verify(identity: dict, tags: dict) -> Optional[str]:
    """Scheme 1 (dinolab up to b299324): sha256 over every identity field as written, frozen here."""
    try:
        method_version = int(tags.get(contract.METHOD_VERSION, "1"))
    except ValueError:
        return f"{contract.METHOD_VERSION}={tags[contract.METHOD_VERSION]!r} is not an int"
    tid = _sha({"identity": identity, "data": tags.get(contract.DATA_FINGERPRINT, ""), "method_version": method_version}, 16)
    if tid != tags.get(contract.TRIAL_ID):
        return f"its recorded config gives scheme-1 id {tid}, not its tag {tags.get(contract.TRIAL_ID)}"
    if contract.CONFIG_HASH in tags and _sha(identity, 12) != tags[contract.CONFIG_HASH]:
        return "its recorded config does not give back its dinolab.config_hash"
    return None


def _v1_to_v2(identity: dict) -> dict:
    """Scheme 2 leaves family knobs unset (None) where scheme 1 had defaults or ignored values: a
    ResNet's or timm model's inherited patch_size, small_stem=False. The network was the same: scheme 1's
    families ignored (or refused) the knobs today's families refuse."""
    from dinolab.models.base import STRUCTURE_KNOBS
    from dinolab.models.registry import structure_knobs

    model = dict(identity.get("model", {}))
    if model.get("small_stem") is False:
        model["small_stem"] = None
    used = structure_knobs(model.get("arch", "vit_small"))
    for knob in STRUCTURE_KNOBS:
        if knob not in used:
            model[knob] = None
    return {**identity, "model": model}


@dataclass(frozen=True)
class Step:
    source: int  # the scheme this step reads
    verify: Callable[[dict, dict], Optional[str]]  # (identity as recorded, tags) -> None, or why the id is not re-derived
    upgrade: Callable[[dict], dict]  # identity fields as the next scheme's config takes them


STEPS = {1: Step(1, _v1_verify, _v1_to_v2)}
# Runtime knobs that left the schema; configs recorded before (config.yaml artifacts, trial folders) still hold them.
RETIRED_RUNTIME = (("train", "fail_at_step"),)  # test-only fault injection, now $DINOLAB_FAULT_AT_STEP


def recorded_config(data: dict, scheme: int) -> dict:
    """A config a run recorded at id scheme ``scheme`` (its ``config.yaml``), as today's schema takes it:
    retired runtime keys dropped, identity fields carried through the chain's steps."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, key in RETIRED_RUNTIME:
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    for version in range(scheme, ID_SCHEME):
        data = STEPS[version].upgrade(data)
    return data


# ----------------------------------------------------------------------------- the plan


@dataclass
class RunChange:
    run_id: str
    status: str
    start_time: int
    superseded: bool
    old_id: str
    new_id: str
    new_hash: str
    params: dict = field(default_factory=dict)  # resolved.* params to add


@dataclass
class Plan:
    tracking_uri: str
    storage: str
    changes: list[RunChange] = field(default_factory=list)
    supersede: dict[str, str] = field(default_factory=dict)  # run id -> reason
    renames: dict[str, str] = field(default_factory=dict)  # old trial id -> new trial id (folders)
    left: dict[str, str] = field(default_factory=dict)  # run id -> why it cannot be migrated

    @property
    def empty(self) -> bool:
        return not (self.changes or self.supersede or self.renames)

    def lines(self) -> list[str]:
        out = [f"run {c.run_id} ({c.status.lower()}): trial {c.old_id} -> {c.new_id}" for c in self.changes]
        out += [f"run {r}: superseded ({why})" for r, why in self.supersede.items()]
        out += [f"trials/{o} -> trials/{n}" for o, n in self.renames.items()]
        out += [f"run {r}: left as it is: {why}" for r, why in self.left.items()]
        return out


def _parse(value: str):
    """An MLflow param back to its value (params are ``str(value)``: 'None', 'True', '[0.4, 1.0]', 'ema')."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _trial_runs(client) -> list:
    """Every active run tagged with a trial id, with its params (newest first)."""
    from mlflow.entities import ViewType

    from dinolab.sweep.store import active_experiment_ids

    out, token = [], None
    experiments = active_experiment_ids(client)
    while experiments:
        page = client.search_runs(experiments, f"tags.`{contract.TRIAL_ID}` IS NOT NULL", run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda r: (int(r.info.start_time or 0), r.info.run_id), reverse=True)


def _rederive(run) -> tuple[Optional[RunChange], Optional[str]]:
    """(the run's change, None), (None, None) when it is at the current scheme, or (None, why not)."""
    tags, params = dict(run.data.tags), dict(run.data.params)
    try:
        scheme = int(tags.get(SCHEME_TAG, "1"))
    except ValueError:
        return None, f"{SCHEME_TAG}={tags[SCHEME_TAG]!r} is not an int"
    if scheme == ID_SCHEME:
        return None, None
    if scheme > ID_SCHEME:
        raise MigrateRefused(f"run {run.info.run_id} has id scheme {scheme}, newer than this dinolab's {ID_SCHEME}: upgrade dinolab")
    identity = _unflatten({k: _parse(v) for k, v in params.items() if not k.startswith(RESOLVED_PREFIX)})
    if not identity:
        return None, "no recorded config (params)"
    for version in range(scheme, ID_SCHEME):
        step = STEPS[version]
        why = step.verify(identity, tags)
        if why:
            return None, why
        identity = step.upgrade(identity)
    try:
        cfg = ExperimentConfig.model_validate(identity)
        fp = tags.get(contract.DATA_FINGERPRINT, "")
        new_id, new_hash, resolved = trial_id(cfg, fp), config_hash(cfg), resolved_params(cfg)
    except ValueError as e:
        return None, f"its config does not resolve today: {' '.join(str(e).split())[:300]}"
    superseded = contract.is_true(tags.get(contract.SUPERSEDED))
    return RunChange(run.info.run_id, run.info.status, int(run.info.start_time or 0), superseded, tags[contract.TRIAL_ID],
                     new_id, new_hash, {k: v for k, v in resolved.items() if k not in params}), None


def plan_migration(client, tracking_uri: str, storage: Path) -> Plan:
    plan = Plan(tracking_uri, str(storage))
    runs = _trial_runs(client)
    current_ids: dict[str, str] = {}  # run id -> its trial id at the current scheme
    by_run = {}
    for run in runs:
        change, why = _rederive(run)
        by_run[run.info.run_id] = run
        if why:
            plan.left[run.info.run_id] = why
        elif change is not None:
            plan.changes.append(change)
            current_ids[run.info.run_id] = change.new_id
        else:
            current_ids[run.info.run_id] = run.data.tags[contract.TRIAL_ID]
    changed = {c.run_id: c for c in plan.changes}
    for new_id in sorted({c.new_id for c in plan.changes}):
        # runs newest first; the superseded ones stay superseded
        members = [r for r in runs if current_ids.get(r.info.run_id) == new_id
                   and not contract.is_true(r.data.tags.get(contract.SUPERSEDED))]
        if not members:
            continue
        keep = next((r for r in members if r.info.status == "FINISHED"), members[0])
        for r in members:
            if r is not keep:
                plan.supersede[r.info.run_id] = f"migrate to id scheme {ID_SCHEME}: trial {new_id} keeps run {keep.info.run_id}"
        kept = changed.get(keep.info.run_id)
        if kept is not None and kept.old_id != new_id:
            old_dir, new_dir = storage / "trials" / kept.old_id, storage / "trials" / new_id
            if old_dir.is_dir() and not new_dir.exists() and _names_run(old_dir, keep.info.run_id):
                plan.renames[kept.old_id] = new_id
    return plan


def _names_run(workdir: Path, run_id: str) -> bool:
    """Whether ``workdir/trial.json`` belongs to ``run_id`` (a folder without one is the trial's too)."""
    try:
        return json.loads((workdir / "trial.json").read_text()).get("run_id") in (None, run_id)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- locks, backup, apply


def _busy(storage: Path) -> list[str]:
    from dinolab.sweep.locks import is_locked

    held = [f"trial {p.parent.name} (claim lock held)" for p in sorted((storage / "trials").glob("*/claim.lock")) if is_locked(p)]
    held += [f"grid {p.parent.name} (a launch is live)" for p in sorted((storage / "grids").glob("*/launch.lock")) if is_locked(p)]
    return held


def _claim_all(storage: Path, trial_ids: set[str]) -> list:
    from dinolab.sweep.locks import FileLock, claim_path

    held = []
    for tid in sorted(trial_ids):
        lock = FileLock(claim_path(storage, tid))
        if not lock.acquire(blocking=False):
            for other in held:
                other.release()
            raise MigrateRefused(f"trial {tid} is claimed by a running sweep: stop it, then run dinolab migrate again")
        held.append(lock)
    return held


def _backup(client, plan: Plan, storage: Path) -> Path:
    """Everything the migration changes, as it was: runs' tags and params, the SQLite file, trial.json files."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = storage / "migrate-backup" / f"{stamp}-to-scheme{ID_SCHEME}"
    out.mkdir(parents=True, exist_ok=False)
    runs = {r.info.run_id: {"status": r.info.status, "tags": dict(r.data.tags), "params": dict(r.data.params)}
            for r in _trial_runs(client)}
    (out / "runs.json").write_text(json.dumps(runs, indent=1, sort_keys=True))
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    uri = plan.tracking_uri
    if uri.startswith("sqlite:///"):
        src = sqlite3.connect(uri[len("sqlite:///"):])
        dst = sqlite3.connect(out / "mlflow.db")
        with dst:
            src.backup(dst)  # a consistent copy even if a reader has the file open
        src.close(), dst.close()
    for old in plan.renames:
        state = storage / "trials" / old / "trial.json"
        if state.exists():
            (out / "trials" / old).mkdir(parents=True)
            shutil.copy2(state, out / "trials" / old / "trial.json")
    return out


def apply_plan(client, plan: Plan, storage: Path) -> Path:
    """Back up, then re-tag, supersede and rename as planned; returns the backup folder."""
    from mlflow.entities import Param, RunTag

    from dinolab import lifecycle
    from dinolab.sweep import store

    backup = _backup(client, plan, storage)
    for c in plan.changes:
        old_tags = client.get_run(c.run_id).data.tags
        previous = [p for p in old_tags.get(PREVIOUS_TAG, "").split(",") if p]
        tags = [RunTag(contract.TRIAL_ID, c.new_id), RunTag(contract.CONFIG_HASH, c.new_hash), RunTag(SCHEME_TAG, str(ID_SCHEME)),
                RunTag(PREVIOUS_TAG, ",".join(previous + [c.old_id]))]
        params = [Param(k, v[:6000]) for k, v in sorted(c.params.items())]
        for i in range(0, max(len(params), 1), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(c.run_id, tags=tags if i == 0 else [], params=params[i:i + 100])
    records = {rec.run_id: rec for recs in store.trial_runs(client).values() for rec in recs}
    for run_id, reason in plan.supersede.items():
        lifecycle.supersede(client, [records[run_id]], reason)
    for old, new in plan.renames.items():
        src, dst = storage / "trials" / old, storage / "trials" / new
        os.rename(src, dst)
        state = dst / "trial.json"
        if state.exists():
            data = json.loads(state.read_text())
            data["trial_id"] = new
            tmp = dst / "trial.json.tmp"
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, state)
    return backup


def write_marker(storage: Path, backup: Optional[Path]) -> None:
    (storage / "trials").mkdir(parents=True, exist_ok=True)
    info = {"id_scheme": ID_SCHEME, "migrated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if backup is not None:
        info["backup"] = str(backup)
    tmp = storage / f"{MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, storage / MARKER)


def require_current_scheme(tracking_uri: str, storage: Path, client=None) -> None:
    """Refuse a launch (``dinolab run``, ``sweep``) onto a store still holding runs of an older id scheme.

    Their trial ids name what the old scheme hashed, so a launch would not find them and would train finished
    trials again. ``<storage>/id_scheme.json`` at ``ID_SCHEME`` means migrate has run (runs it could not carry
    over were named then); otherwise one run of an older scheme (no ``dinolab.id_scheme`` tag = 1) refuses."""
    from mlflow.entities import ViewType

    from dinolab.config import ConfigError
    from dinolab.sweep.store import active_experiment_ids, open_client, store_exists

    if not store_exists(tracking_uri):  # no store yet: nothing recorded under an older scheme
        return
    client = client or open_client(tracking_uri)
    try:
        if json.loads((Path(storage) / MARKER).read_text()).get("id_scheme") == ID_SCHEME:
            return
    except (OSError, ValueError, AttributeError):
        pass
    experiments = active_experiment_ids(client)
    for older in (f"tags.`{contract.TRIAL_ID}` IS NOT NULL AND tags.`{SCHEME_TAG}` IS NULL",
                  f"tags.`{contract.TRIAL_ID}` IS NOT NULL AND tags.`{SCHEME_TAG}` != '{ID_SCHEME}'"):
        if experiments and client.search_runs(experiments, older, run_view_type=ViewType.ACTIVE_ONLY, max_results=1):
            raise ConfigError(f"the tracking store {redact_uri(tracking_uri)} holds trial runs of an older trial-id scheme: "
                              f"run `dinolab migrate --dry-run`, then `dinolab migrate`, before launching "
                              f"(else finished trials would train again)")


def migrate(tracking_uri: str, storage: Path, dry_run: bool = False, echo: Callable[[str], None] = print) -> int:
    """The command: 0 when the store is at ``ID_SCHEME`` afterwards (or would be), 1 when some runs were left."""
    from dinolab.sweep import store

    storage = Path(storage).expanduser().resolve()
    busy = _busy(storage)
    if busy:
        raise MigrateRefused(f"the store is in use: {', '.join(busy)}; stop the sweep, then run dinolab migrate again")
    if not store.store_exists(tracking_uri):
        echo(f"no tracking store at {tracking_uri}: nothing to migrate")
        return 0
    client = store.open_client(tracking_uri)
    plan = plan_migration(client, tracking_uri, storage)
    for line in plan.lines():
        echo(line)
    if plan.empty:
        echo(f"store at id scheme {ID_SCHEME}: nothing to migrate" + (f" ({len(plan.left)} runs left as they are)" if plan.left else ""))
        if not dry_run:  # the runs left were named above; a launch may go on without them
            write_marker(storage, None)
        return 1 if plan.left else 0
    if dry_run:
        echo(f"dry run: {len(plan.changes)} runs would be re-tagged, {len(plan.supersede)} superseded, "
             f"{len(plan.renames)} trial folders renamed; nothing was changed")
        return 1 if plan.left else 0
    touched = {c.old_id for c in plan.changes} | {c.new_id for c in plan.changes}
    locks = _claim_all(storage, {t for t in touched if (storage / "trials" / t).is_dir()})
    try:
        backup = apply_plan(client, plan, storage)
    finally:
        for lock in locks:
            lock.release()
    write_marker(storage, backup)
    echo(f"migrated to id scheme {ID_SCHEME}: {len(plan.changes)} runs re-tagged, {len(plan.supersede)} superseded, "
         f"{len(plan.renames)} trial folders renamed; backup in {backup}")
    return 1 if plan.left else 0
