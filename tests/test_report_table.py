"""The ablation table rebuilt from runs logged into a temporary MLflow store, checked cell by cell.

The runs are recorded with the trial's own tags/params/summaries (``report.synthetic.log_trial_run``) for
the edge cases: several seeds (mean ± std), collapsed, failed with a reason, running, never run, a
superseded older run, a reference-only row; one grid whose setup differs from the paper's (effects and
agreement) and one whose setup matches (differences).
"""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from dinolab.config.grid import load_grid
from dinolab.report.runs import cast_param, load_runs, select_runs
from dinolab.report.synthetic import log_trial_run, new_sqlite_store, supersede
from dinolab.report.table import (
    Stat, agreement, build_table, metric_value, report_table, setup_mismatches, tables_for_grids,
)

NOW = 1_800_000_000.0
FP = "fingerprint-test"

# k-NN finals per (row, seed) of the unmatched grid; linear = k-NN + 10; best k-NN = final + 3.
KNN = {
    "DINO": [50.0, 52.0, 54.0],
    "no momentum": [10.0, 11.0, 12.0],  # collapsed; effect -40, -41, -42 -> agrees with paper (-72.7)
    "+ Sinkhorn-Knopp": [51.0, 53.0, 52.0],  # effect +1, +1, -2 -> inconclusive
    "no multi-crop": [55.0, 57.0, 59.0],  # effect +5 on each seed (std 0) -> disagrees with paper (-4.9)
}

UNMATCHED = """
grid: tiny_t7
base: {base}
paper_table: dino_t7_components
paper_setup: {{data: imagenet, arch: vit_small, patch_size: 16, epochs: 300, gpus: 16}}
set: {{train.epochs: 10, model.patch_size: 4}}
seeds: [0, 1, 2]
columns:
  - {{metric: knn_top1, label: k-NN, paper: knn}}
  - {{metric: linear_top1, label: Linear, paper: linear}}
  - {{metric: knn_top1, label: k-NN best, agg: best}}
rows:
  - {{name: DINO, default: true, set: {{dino.centering: ema}}, paper_row: 1, labels: {{mom: "✓", loss: CE}}}}
  - {{name: no momentum, set: {{dino.teacher: student_copy}}, paper_row: 2, labels: {{mom: "✗", loss: CE}}}}
  - {{name: + Sinkhorn-Knopp, set: {{dino.centering: sinkhorn}}, paper_row: 3}}
  - {{name: no multi-crop, set: {{crops.local_number: 0}}, paper_row: 4}}
  - {{name: MSE loss, set: {{dino.loss: mse, dino.centering: none}}, paper_row: 5}}
  - {{name: + predictor, set: {{dino.predictor: true}}, paper_row: 6}}
  - {{name: BYOL-like, set: {{dino.loss: mse, dino.centering: none, dino.predictor: true}}, paper_row: 7}}
  - {{name: MoCo-v2-like, set: {{dino.loss: infonce, dino.centering: none}}, paper_row: 8}}
  - {{name: SwAV-like, reference_only: true, set: {{dino.centering: sinkhorn}}, paper_row: 9}}
"""

MATCHED = """
grid: tiny_matched
base: {base}
paper_table: dino_t7_components
paper_setup: {{data: synthetic, patch_size: 4, epochs: 10}}
set: {{train.epochs: 10, model.patch_size: 4}}
seeds: [0]
columns:
  - {{metric: knn_top1, label: k-NN, paper: knn}}
rows:
  - {{name: DINO, default: true, set: {{dino.centering: ema}}, paper_row: 1, paper: {{knn: 49.5}}}}
  - {{name: momentum 0.8, set: {{dino.momentum: 0.8}}, paper_row: 1, paper: {{knn: 45.0}}}}
"""


def _history(final: float) -> dict:
    return {
        "loss": [5.0, 4.0, 3.5], "teacher_entropy": [3.0, 2.0, 1.5], "kl": [0.5, 0.3, 0.2],
        "knn_top1": [final - 5.0, final + 3.0, final], "images_per_s": [90.0, 100.0, 110.0],
    }


def _final(knn: float, seed: int) -> dict:
    return {
        "knn_top1": knn, "linear_top1": knn + 10.0, "throughput_images_per_s": 100.0 + 10 * seed,
        "wall_time_s": 60.0 + seed, "cpu_hours": 0.01 * (seed + 1), "gpu_hours": 0.0, "peak_rss_mb": 900.0 + seed,
        "cuda_peak_mb": 0.0,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_experiment):
    """Two grids and their runs in one temporary SQLite store."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        return _make_store(tmp_path_factory.mktemp("report_store"), tiny_experiment)


def _make_store(tmp, base):
    uri = new_sqlite_store(tmp / "mlflow.db")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("report-test", artifact_location=(tmp / "artifacts").as_uri())
    paths = {}
    for name, text in (("tiny_t7", UNMATCHED), ("tiny_matched", MATCHED)):
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(text.format(base=base))
    grid = load_grid(paths["tiny_t7"], fingerprint=lambda d: FP)
    matched = load_grid(paths["tiny_matched"], fingerprint=lambda d: FP)
    trial = {(t.row, t.seed): t for t in grid.trials}

    def log(row, seed, **kw):
        t = trial[(row, seed)]
        return log_trial_run(client, exp, t.config, t.trial_id, fingerprint=FP, grids=["tiny_t7"], **kw)

    for row, values in KNN.items():
        for seed, v in enumerate(values):
            collapsed = row == "no momentum"
            log(row, seed, history=_history(v), final=_final(v, seed), collapsed=collapsed,
                collapse_reason="uniform teacher: entropy at ln K" if collapsed else "")
    log("MSE loss", 0, status="FAILED", history={"loss": [5.0]}, failure_reason="non-finite loss: nan at step 3")
    log("+ predictor", 0, status="RUNNING", history={"loss": [5.0, 4.5]}, heartbeat=NOW - 120)
    # MoCo-v2-like: seed 0 finished; seed 1 an old finished run superseded by a newer failed one (its stale
    # number must not show); seed 2 an old superseded run (99) and a newer finished one (40).
    log("MoCo-v2-like", 0, history=_history(45.0), final=_final(45.0, 0))
    supersede(client, log("MoCo-v2-like", 1, history=_history(77.0), final=_final(77.0, 1)))
    log("MoCo-v2-like", 1, status="FAILED", failure_reason="RuntimeError: CUDA out of memory")
    supersede(client, log("MoCo-v2-like", 2, history=_history(99.0), final=_final(99.0, 2)))
    log("MoCo-v2-like", 2, history=_history(40.0), final=_final(40.0, 2))
    # The matched grid: its DINO trial is the same trial as tiny_t7's DINO seed 0 (shared run, knn 50).
    m = {t.row: t for t in matched.trials}
    log_trial_run(client, exp, m["momentum 0.8"].config, m["momentum 0.8"].trial_id, fingerprint=FP,
                  history=_history(47.0), final=_final(47.0, 0))
    return {"uri": uri, "grid": grid, "matched": matched, "paths": paths}


@pytest.fixture(scope="module")
def table(store):
    return build_table(store["grid"], load_runs(store["uri"], [t.trial_id for t in store["grid"].trials]),
                       tracking_uri=store["uri"], now=NOW)


def _close(stat, mean, std, n):
    assert stat is not None
    assert stat.n == n
    assert stat.mean == pytest.approx(mean)
    if std is None:
        assert stat.std is None
    else:
        assert stat.std == pytest.approx(std)


def test_rows_and_columns_in_the_papers_order(table):
    assert [r.name for r in table.rows] == [
        "DINO", "no momentum", "+ Sinkhorn-Knopp", "no multi-crop", "MSE loss", "+ predictor", "BYOL-like",
        "MoCo-v2-like", "SwAV-like",
    ]
    assert [c.label for c in table.columns] == ["k-NN", "Linear", "k-NN best"]
    assert table.default_row == "DINO" and table.row("DINO").default
    assert table.label_columns == ["mom", "loss"]
    assert table.row("no momentum").labels == {"mom": "✗", "loss": "CE"}


def test_cells_mean_std_over_seeds(table):
    for row, values in KNN.items():
        cell = table.cell(row, "k-NN")
        _close(cell.stat, statistics.mean(values), statistics.stdev(values), 3)
        assert cell.per_seed == {0: values[0], 1: values[1], 2: values[2]}
        _close(table.cell(row, "Linear").stat, statistics.mean(values) + 10, statistics.stdev(values), 3)
        _close(table.cell(row, "k-NN best").stat, statistics.mean(values) + 3, statistics.stdev(values), 3)
    assert table.cell("DINO", "k-NN").status == "ok"


def test_paper_values_come_from_the_paper_table_rows(table):
    expected = {"DINO": 72.8, "no momentum": 0.1, "+ Sinkhorn-Knopp": 72.2, "no multi-crop": 67.9,
                "MSE loss": 52.6, "SwAV-like": 64.7}
    for row, knn in expected.items():
        assert table.cell(row, "k-NN").paper == pytest.approx(knn)
    assert table.cell("DINO", "Linear").paper == pytest.approx(76.1)
    assert table.cell("DINO", "k-NN best").paper is None  # the column names no paper column


def test_collapsed_failed_running_missing_cells(table):
    collapsed = table.cell("no momentum", "k-NN")
    assert collapsed.status == "collapsed"
    assert any("uniform teacher" in r for r in collapsed.reasons)

    failed = table.cell("MSE loss", "k-NN")
    assert failed.status == "failed" and failed.stat is None
    assert failed.counts == {"failed": 1, "missing": 2}
    assert failed.reasons == ["seed 0: failed: non-finite loss: nan at step 3"]

    running = table.cell("+ predictor", "k-NN")
    assert running.status == "running" and running.stat is None
    assert running.counts == {"running": 1, "missing": 2}
    assert running.reasons == ["seed 0: running: 2 epochs done, heartbeat 2 min ago"]

    missing = table.cell("BYOL-like", "k-NN")
    assert missing.status == "missing" and missing.stat is None and missing.counts == {"missing": 3}
    assert [t.status for t in table.row("BYOL-like").trials] == ["missing"] * 3

    ref = table.row("SwAV-like")
    assert ref.reference_only and ref.trials == [] and ref.compare is None
    assert [c.status for c in ref.cells] == ["reference"] * 3


def test_superseded_runs_never_show(table):
    cell = table.cell("MoCo-v2-like", "k-NN")
    # seed 1's newest run failed: its superseded 77 is stale; seed 2's superseded 99 is replaced by 40.
    assert cell.per_seed == {0: 45.0, 2: 40.0}
    _close(cell.stat, 42.5, math.sqrt(12.5), 2)
    assert cell.status == "ok" and cell.counts == {"finished": 2, "failed": 1}  # trial states: lifecycle.TrialState
    assert "seed 1: failed: RuntimeError: CUDA out of memory" in cell.reasons
    assert [t.status for t in table.row("MoCo-v2-like").trials] == ["finished", "failed", "finished"]


def test_unmatched_setup_shows_effects_and_agreement(table):
    row = table.row("no momentum")
    assert row.compare == "effect"
    assert "data: synthetic (paper: imagenet)" in row.setup_notes
    assert "epochs: 10 (paper: 300)" in row.setup_notes
    assert any("model.embed_dim=32" in n for n in row.setup_notes)  # the tiny experiment's width
    assert any("gpus" in n for n in table.notes)  # runtime entry: named as not compared

    c = table.cell("no momentum", "k-NN")
    _close(c.effect, -41.0, 1.0, 3)
    assert c.paper_effect == pytest.approx(0.1 - 72.8)
    assert c.agreement == "agree" and c.diff is None

    c = table.cell("+ Sinkhorn-Knopp", "k-NN")  # per-seed effects +1, +1, -2: mean 0, std sqrt(3)
    _close(c.effect, 0.0, math.sqrt(3.0), 3)
    assert c.agreement == "inconclusive"

    c = table.cell("no multi-crop", "k-NN")  # +5 on every seed, std 0: conclusive, against the paper's -4.9
    _close(c.effect, 5.0, 0.0, 3)
    assert c.paper_effect == pytest.approx(67.9 - 72.8)
    assert c.agreement == "disagree"

    c = table.cell("MoCo-v2-like", "k-NN")  # paired on seeds 0 and 2: 45-50, 40-54
    _close(c.effect, -9.5, math.sqrt(40.5), 2)
    assert c.agreement == "inconclusive"

    assert table.cell("DINO", "k-NN").effect is None and table.cell("DINO", "k-NN").agreement is None
    assert table.cell("no momentum", "k-NN best").agreement is None  # no paper value: not counted

    s = table.summary
    # k-NN + Linear columns: no momentum agree x2, no multi-crop disagree x2, Sinkhorn + MoCo inconclusive x2 each.
    assert (s.agree, s.disagree, s.inconclusive) == (2, 2, 4)
    assert (s.effect_rows, s.paper_rows) == (8, 0)


def test_matched_setup_shows_differences(store):
    t = build_table(store["matched"], load_runs(store["uri"]), tracking_uri=store["uri"], now=NOW)
    assert [r.compare for r in t.rows] == ["paper", "paper"]
    assert all(r.setup_notes == [] for r in t.rows)
    dino = t.cell("DINO", "k-NN")  # the run shared with tiny_t7 (same trial id)
    _close(dino.stat, 50.0, None, 1)
    assert dino.diff == pytest.approx(0.5) and dino.agreement is None and dino.effect is None
    assert t.cell("momentum 0.8", "k-NN").diff == pytest.approx(2.0)
    assert (t.summary.paper_rows, t.summary.effect_rows, t.summary.agree) == (2, 0, 0)


def test_cost_per_row(table):
    cost = table.row("DINO").cost
    _close(cost.images_per_s, 110.0, 10.0, 3)
    _close(cost.wall_time_s, 61.0, 1.0, 3)
    _close(cost.hours, 0.02, 0.01, 3)
    assert cost.hours_unit == "CPU-h"
    _close(cost.peak_rss_mb, 901.0, 1.0, 3)
    assert table.row("MSE loss").cost.images_per_s is None  # failed trials have no cost figures


def test_sql_and_search_readers_agree(store):
    ids = [t.trial_id for t in store["grid"].trials]
    sql = load_runs(store["uri"], ids, method="sql")
    search = load_runs(store["uri"], ids, method="search")
    assert sorted(sql["run_id"]) == sorted(search["run_id"])
    assert len(sql) == 19  # 12 + 1 failed + 1 running + MoCo: 1 + 2 + 2 (superseded and replacement)
    sql, search = sql.set_index("run_id").sort_index(), search.set_index("run_id").sort_index()
    common = [c for c in sql.columns if c.startswith(("metrics.", "params.", "tags.")) or c == "status"]
    assert set(common) == {c for c in search.columns if c.startswith(("metrics.", "params.", "tags.")) or c == "status"}
    pd.testing.assert_frame_equal(sql[common], search[common[:]], check_dtype=False)
    assert (sql["start_time"] == search["start_time"]).all()
    t_sql = build_table(store["grid"], load_runs(store["uri"], ids, method="sql"), now=NOW)
    t_search = build_table(store["grid"], load_runs(store["uri"], ids, method="search"), now=NOW)
    for a, b in zip(t_sql.rows, t_search.rows):
        assert [(c.status, c.stat, c.agreement) for c in a.cells] == [(c.status, c.stat, c.agreement) for c in b.cells]


def test_restricted_keys_and_selection(store):
    ids = [t.trial_id for t in store["grid"].trials]
    runs = load_runs(store["uri"], ids, metric_keys=["final/knn_top1"], param_keys=["model.arch"], tag_prefixes=["dinolab.coll"])
    assert [c for c in runs.columns if c.startswith("metrics.")] == ["metrics.final/knn_top1"]
    assert [c for c in runs.columns if c.startswith("params.")] == ["params.model.arch"]
    tags = {c for c in runs.columns if c.startswith("tags.")}
    assert tags == {"tags.dinolab.trial_id", "tags.dinolab.config_hash", "tags.dinolab.collapsed",
                    "tags.dinolab.collapse_reason"}
    current = select_runs(load_runs(store["uri"], ids))
    assert current.index.is_unique and len(current) == 17  # one current run per trial that has one
    assert not (current["tags.dinolab.superseded"] == "true").any()


def test_report_entry_points_take_a_tracking_uri(store):
    tables = tables_for_grids([store["grid"], store["matched"]], store["uri"], now=NOW)
    assert [t.grid for t in tables] == ["tiny_t7", "tiny_matched"]
    assert tables[0].cell("no momentum", "k-NN").agreement == "agree"
    one = report_table(store["grid"], store["uri"], now=NOW)
    assert one.cell("MoCo-v2-like", "k-NN").per_seed == {0: 45.0, 2: 40.0}


def test_trials_without_data_are_found_by_config_hash(store):
    """Where the data is absent the trial id cannot be computed: the run is found by its config hash."""
    from dinolab.config import ConfigError

    def no_data(d):
        raise ConfigError("data.root: /nowhere not found")

    grid = load_grid(store["paths"]["tiny_t7"], fingerprint=no_data)
    t = tables_for_grids([grid], store["uri"], now=NOW)[0]
    _close(t.cell("DINO", "k-NN").stat, 52.0, 2.0, 3)
    assert t.cell("MSE loss", "k-NN").status == "failed"
    assert any("config hash" in n for n in t.notes)


def test_empty_store_gives_missing_cells(store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    t = build_table(store["grid"], load_runs(uri), now=NOW)
    assert {c.status for r in t.rows if not r.reference_only for c in r.cells} == {"missing"}
    assert (t.summary.agree, t.summary.disagree, t.summary.inconclusive) == (0, 0, 0)


# ---------------------------------------------------------------- pure pieces


def test_metric_value_picks_the_declared_summary():
    run = {"metrics.final/knn_top1": 50.0, "metrics.best/knn_top1": 53.0, "metrics.last3/knn_top1": 49.0,
           "metrics.knn_top1": 50.0, "metrics.linear_top1": 60.0}
    assert metric_value(run, "knn_top1", "final") == 50.0
    assert metric_value(run, "knn_top1", "best") == 53.0
    assert metric_value(run, "knn_top1", "last3") == 49.0
    assert metric_value(run, "knn_top1", "last5") is None  # trials log last3 only
    # a one-off metric is its own best and last-k
    assert metric_value(run, "linear_top1", "best") == 60.0 and metric_value(run, "linear_top1", "last3") == 60.0
    with pytest.raises(ValueError, match="final, best, last<k>"):
        metric_value(run, "knn_top1", "mean")


def test_agreement_rule():
    assert agreement(Stat(-3.0, 1.0, 3), -5.0) == "agree"
    assert agreement(Stat(3.0, 1.0, 3), -5.0) == "disagree"
    assert agreement(Stat(2.0, 1.0, 3), -5.0) == "inconclusive"  # |effect| = 2 std: not larger
    assert agreement(Stat(2.0, None, 1), -5.0) == "inconclusive"  # one seed: no std
    assert agreement(Stat(2.0, 0.1, 3), 0.0) is None and agreement(None, 1.0) is None


def test_setup_comparison():
    values = {"data.name": "imagefolder", "model.arch": "vit_small", "model.patch_size": 16, "train.epochs": 300,
              "train.batch_size": 1024, "crops.global_size": 224, "crops.local_size": 96, "crops.local_number": 10}
    paper = {"data": "imagenet", "arch": "vit_small", "patch_size": 16, "epochs": 300, "batch_size": 1024, "gpus": 16,
             "multicrop": "2x224+10x96"}
    assert setup_mismatches(paper, values, "/datasets/imagenet") == []
    assert setup_mismatches(paper, values, "/datasets/ILSVRC2012/train") == []
    assert setup_mismatches(paper, values, "/data/cifar10") == ["data: cifar10 (paper: imagenet)"]
    assert setup_mismatches(paper, {**values, "train.epochs": 20}, "/datasets/imagenet") == ["epochs: 20 (paper: 300)"]
    assert setup_mismatches(paper, {**values, "data.name": "cifar100"}) == ["data: cifar100 (paper: imagenet)"]
    assert setup_mismatches({"multicrop": "2x224"}, values) == ["multicrop: 2x224+10x96 (paper: 2x224)"]
    # a key the row itself changes is not part of the shared setup
    assert setup_mismatches(paper, {**values, "model.patch_size": 8}, "/datasets/imagenet", skip={"model.patch_size"}) == []


def test_params_cast_through_the_schema():
    assert cast_param("model.patch_size", "16") == 16
    assert cast_param("crops.global_scale", "[0.4, 1.0]") == (0.4, 1.0)
    assert cast_param("model.embed_dim", "None") is None
    assert cast_param("model.arch", "vit_small") == "vit_small"
    assert cast_param("dino.predictor", "False") is False
    assert cast_param("train.lr", "0.0005") == pytest.approx(5e-4)
    assert cast_param("model.depths", "[4]") == [4]
    assert cast_param("not.a.field", "7") == "7"


def test_sql_fast_path_reads_what_the_mlflow_client_reads(store):
    """The SQL reader reads MLflow's private tables: each run's every field, as read through the public
    ``MlflowClient``, comes back the same, so a change of MLflow's schema fails here, not in a report."""
    from mlflow.tracking import MlflowClient

    from dinolab.report.runs import is_missing
    from dinolab.track import contract

    client = MlflowClient(tracking_uri=store["uri"])
    sql = load_runs(store["uri"], method="sql")
    exp = client.get_experiment_by_name("report-test").experiment_id
    expected = {r.info.run_id for r in client.search_runs([exp], f"tags.`{contract.TRIAL_ID}` IS NOT NULL", max_results=1000)}
    assert set(sql["run_id"]) == expected and len(sql) == len(expected) == 20  # both grids
    for rec in sql.to_dict("records"):
        run = client.get_run(rec["run_id"])
        info = run.info
        assert (rec["experiment_id"], rec["status"], rec["artifact_uri"], rec["run_name"]) == (
            info.experiment_id, info.status, info.artifact_uri, info.run_name)
        assert rec["start_time"] == pd.Timestamp(info.start_time, unit="ms", tz="UTC")
        assert (None if pd.isna(rec["end_time"]) else rec["end_time"]) == (
            None if info.end_time is None else pd.Timestamp(info.end_time, unit="ms", tz="UTC"))
        for prefix, logged in (("metrics.", run.data.metrics), ("params.", run.data.params), ("tags.", run.data.tags)):
            read = {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix) and not is_missing(v)}
            assert read == logged, (prefix, rec["run_id"])
