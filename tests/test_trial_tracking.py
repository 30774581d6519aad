"""A trial logs one complete MLflow run into a temporary store; bad input writes nothing."""

import pytest
import yaml

from dinolab.config import ID_SCHEME, flatten, identity_dict, resolved_params
from dinolab.trial import run_trial, summaries
from dinolab.track import contract
from dinolab.track.mlflow_store import client_for


def test_trial_logs_params_tags_metrics_and_artifacts(tiny_config, store, tmp_path):
    cfg = tiny_config(f"tracking.uri={store}", "eval.knn_every=1")
    outcome = run_trial(cfg, storage=tmp_path / "storage")
    assert outcome.status == "FINISHED", outcome.reason
    client = client_for(store)
    run = client.get_run(outcome.run_id)
    d = run.data

    # params: exactly the flattened identity fields as written, and as resolved (resolved.*); runtime fields are tags.
    assert d.params == {**{k: str(v) for k, v in flatten(identity_dict(cfg)).items()}, **resolved_params(cfg)}
    assert d.params["resolved.model.embed_dim"] == str(cfg.model.embed_dim) and d.tags["dinolab.id_scheme"] == str(ID_SCHEME)
    assert "data.root" not in d.params and "runtime.data.num_workers" in d.tags
    for tag in ("dinolab.trial_id", "dinolab.config_hash", "dinolab.git_commit", "dinolab.git_dirty", "dinolab.torch",
                "dinolab.device", "dinolab.data_fingerprint", "dinolab.collapsed", "dinolab.method_version"):
        assert d.tags.get(tag), tag
    assert d.tags["dinolab.trial_id"] == outcome.trial_id

    # per-epoch curves: one value per epoch, steps 0..E-1.
    for name in ("loss", "teacher_entropy", "kl", "lr", "momentum", "teacher_temp", "knn_top1"):
        hist = client.get_metric_history(outcome.run_id, name)
        epochs = sorted(m.step for m in hist if m.step < cfg.train.epochs)
        assert epochs == list(range(cfg.train.epochs)), name
    # summaries and final metrics.
    for name in ("final/loss", "best/loss", "last3/loss", "final/knn_top1", "best/knn_top1", "knn_top1", "linear_top1",
                 "knn_top1_random_init", "throughput_images_per_s", "wall_time_s", "peak_rss_mb", "cpu_hours"):
        assert name in d.metrics, name
    assert 0.0 <= d.metrics["knn_top1"] <= 100.0
    assert d.metrics["peak_rss_mb"] > 10

    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"config.yaml", "environment.txt", "weights"} <= artifacts
    logged = yaml.safe_load(open(client.download_artifacts(outcome.run_id, "config.yaml", str(tmp_path))))
    assert logged["model"]["embed_dim"] == 32 and logged["data"]["synthetic_train"] == 64

    # every key the trial logged is named by the tracking contract
    assert set(d.metrics) <= set(contract.logged_metrics()), set(d.metrics) - set(contract.logged_metrics())
    assert all(contract.is_trial_tag(k) for k in d.tags), [k for k in d.tags if not contract.is_trial_tag(k)]
    assert artifacts <= {contract.CONFIG_ARTIFACT, contract.ENVIRONMENT_ARTIFACT, contract.WEIGHTS_DIR,
                         contract.MLFLOW_IMAGES_DIR}, artifacts
    weights = {a.path for a in client.list_artifacts(outcome.run_id, contract.WEIGHTS_DIR)}
    assert weights == {contract.WEIGHTS_ARTIFACT}


def test_summaries_hand_computed():
    s = summaries({"loss": [3.0, 1.0, 2.0, 2.5], "knn_top1": [10.0, 30.0, 20.0], "epoch": [0, 1, 2]})
    assert s["final/loss"] == 2.5 and s["best/loss"] == 1.0 and s["last3/loss"] == pytest.approx(5.5 / 3)
    assert s["final/knn_top1"] == 20.0 and s["best/knn_top1"] == 30.0 and s["last3/knn_top1"] == pytest.approx(20.0)
    assert "final/epoch" not in s


BAD_INPUTS = [
    (["--set", "model.pach_size=8"], "model.patch_size"),                 # unknown key, nearest suggested
    (["--set", "train.epochs=ten"], "train.epochs"),                       # wrong type
    (["--set", "train.epochs=0"], "train.epochs"),                         # out of range
    (["--set", "dino.teacher=swa"], "student_copy"),                       # not an allowed choice
    (["--set", "model.patch_size=5"], "model.patch_size=5"),               # does not divide the 32 px crop
    (["--set", "eval.image_size=30"], "eval.image_size"),                  # patch 4 does not divide the eval size
    (["--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/x"], "data.root"),  # missing path
    (["--set", "train.epochs"], "dotted.key=value"),                        # malformed --set
    # a knob the family does not use (the tiny experiment's ViT patch size on a ResNet), and what the family takes
    (["--set", "model.arch=resnet18"], "model.patch_size=4 does not apply to model.arch=resnet18"),
    (["--set", "model.arch=resnet18"], "takes model.embed_dim, model.depths, model.small_stem"),
    (["--set", "model.window_size=7"], "model.window_size=7 does not apply to model.arch=vit_tiny"),
    (["--set", "model.num_heads=0"], "model.num_heads=0 must be >= 1 and divide model.embed_dim=32"),
    (["--set", "model.num_heads=5"], "model.num_heads=5 must be >= 1 and divide model.embed_dim=32"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(tiny_experiment, tmp_path, monkeypatch, capsys, args, needle):
    from dinolab.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("DINOLAB_HOME", str(home))
    assert main(["run", str(tiny_experiment), *args]) == 2
    lines = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("dinolab: error:"), lines
    assert needle in lines[0]
    assert not home.exists()  # nothing written: no store, no trial folder


def test_empty_imagefolder_root_is_refused(tiny_experiment, tmp_path, capsys):
    from dinolab.cli import main

    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    assert main(["run", str(tiny_experiment), "--set", "data.name=imagefolder", "--set", f"data.root={empty}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.root" in err[0]
