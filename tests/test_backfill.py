"""A metric added after a trial ran is recomputed from the run's saved final weights, without
retraining, and logged into that run: here it must reproduce what the trial itself measured."""

from dinolab.backfill import backfill_grid
from dinolab.config.grid import load_grid
from dinolab.track.mlflow_store import client_for
from dinolab.trial import run_trial


def test_backfill_attention_reproduces_the_trials_own_numbers(write_grid, store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    grid_file = write_grid(tmp_path, "backfill_test", [{"name": "DINO", "default": True, "set": {"dino.centering": "ema"}}])
    grid = load_grid(grid_file)
    (trial,) = grid.trials
    outcome = run_trial(trial.config, storage=tmp_path / "storage", grids=[grid.name])
    assert outcome.status == "FINISHED", outcome.reason
    measured = {k: outcome.final[k] for k in ("attn_jaccard_best_head", "attn_jaccard_mean_head")}

    done = backfill_grid(str(grid_file))
    assert list(done) == [outcome.run_id]
    assert done[outcome.run_id] == measured
    client = client_for(store)
    history = client.get_metric_history(outcome.run_id, "attn_jaccard_best_head")
    assert len(history) == 2 and {m.value for m in history} == {measured["attn_jaccard_best_head"]}
