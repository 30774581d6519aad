"""Team-scale pieces that need no cluster: URI redaction, the SQLite refusal, the autoscaling resource
check, the resource wait, the launch marker, and the `dinolab server` command line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dinolab.config import ConfigError
from dinolab.home import redact_uri
from dinolab.sweep import cluster


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://lab:hunter2@db:5432/mlflow", "postgresql://lab:***@db:5432/mlflow"),
    ("postgresql+psycopg2://lab:p%40ss@[::1]/mlflow", "postgresql+psycopg2://lab:***@[::1]/mlflow"),
    ("http://alice:hunter2@tracking:5000", "http://alice:***@tracking:5000"),
    ("postgresql://db/mlflow?user=lab&password=hunter2&sslmode=require",
     "postgresql://db/mlflow?user=lab&password=***&sslmode=require"),
    ("postgresql://lab@db/mlflow", "postgresql://lab@db/mlflow"),  # no password: untouched
    ("http://tracking:5000", "http://tracking:5000"),
    ("sqlite:////home/me/.dinolab/mlflow.db", "sqlite:////home/me/.dinolab/mlflow.db"),
    (None, None),
])
def test_redact_uri_hides_only_the_password(uri, shown):
    assert redact_uri(uri) == shown
    if uri:
        assert "hunter2" not in redact_uri(uri)


def test_run_tags_and_config_never_carry_the_tracking_password(tmp_path, tiny_config, store):
    """tracking.uri with a password: tags, config.yaml (artifact and trial folder) and trial.json show it redacted."""
    from mlflow.tracking import MlflowClient

    from dinolab.trial import run_trial

    cfg = tiny_config("train.epochs=1", "eval.linear_epochs=1", "tracking.uri=postgresql://lab:hunter2@db.invalid/mlflow")
    outcome = run_trial(cfg, tracking_uri=store, storage=tmp_path / "storage")  # the client logs into ``store``
    client = MlflowClient(store)
    run = client.get_run(outcome.run_id)
    assert run.data.tags["runtime.tracking.uri"] == "postgresql://lab:***@db.invalid/mlflow"
    assert "hunter2" not in " ".join([*run.data.tags.values(), *run.data.params.values()])
    (tmp_path / "dl").mkdir()
    logged = Path(client.download_artifacts(outcome.run_id, "config.yaml", str(tmp_path / "dl"))).read_text()
    assert "hunter2" not in logged and "lab:***@db.invalid" in logged
    assert "hunter2" not in (outcome.workdir / "config.yaml").read_text()
    assert "hunter2" not in (outcome.workdir / "trial.json").read_text()


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_a_local_store_is_refused_on_more_than_one_node(uri):
    cluster.require_shared_tracking(uri, n_nodes=1)  # one node: allowed
    for kw in ({"n_nodes": 2}, {"n_nodes": 1, "autoscaling": True}):
        with pytest.raises(ConfigError) as e:
            cluster.require_shared_tracking(uri, **kw)
        msg = str(e.value)
        assert "\n" not in msg and "dinolab server" in msg and "MLFLOW_TRACKING_URI" in msg
    cluster.require_shared_tracking("http://tracking:5000", n_nodes=8)
    cluster.require_shared_tracking("databricks", n_nodes=8)


def test_refusal_message_redacts_the_uri():
    with pytest.raises(ConfigError) as e:
        cluster.require_shared_tracking("file://me:hunter2@host/x", n_nodes=2)
    assert "hunter2" not in str(e.value)


NODE = {"Alive": True, "NodeID": "a", "Resources": {"CPU": 8.0}}


def test_autoscaling_check_accepts_what_the_largest_addable_node_holds():
    gpu_trial = [(2, 4.0, 1.0)]  # 2 workers x (4 CPU, 1 GPU): no GPU node now
    with pytest.raises(ConfigError, match="no node has that much"):
        cluster.check_cluster_resources(gpu_trial, [NODE])
    cluster.check_cluster_resources(gpu_trial, [NODE], max_node_cpus=16, max_node_gpus=1)
    cluster.check_cluster_resources(gpu_trial, [NODE], max_node_gpus=8)  # CPUs not declared: not limiting
    with pytest.raises(ConfigError) as e:
        cluster.check_cluster_resources(gpu_trial, [NODE], max_node_cpus=16)  # GPUs not declared: a CPU node
    assert "largest node it can add" in str(e.value) and "--max-node-gpus 0" in str(e.value)
    with pytest.raises(ConfigError):
        cluster.check_cluster_resources([(1, 32.0, 0.0)], [NODE], max_node_cpus=16, max_node_gpus=1)
    # many workers that fit one node each: the autoscaler adds nodes, the total is not bounded
    cluster.check_cluster_resources([(64, 8.0, 0.0)], [NODE], max_node_cpus=8)
    with pytest.raises(ConfigError, match="holds only"):
        cluster.check_cluster_resources([(64, 8.0, 0.0)], [NODE])


def test_wait_for_resources_returns_when_the_check_passes_and_fails_after_the_limit():
    calls = []

    def check():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConfigError("resources: not yet")

    waited = cluster.wait_for_resources(check, timeout_s=30, poll_s=0.05)
    assert len(calls) == 3 and 0.05 <= waited < 5
    assert cluster.wait_for_resources(lambda: None, timeout_s=0) == 0.0

    def never():
        raise ConfigError("resources: never")

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"resources: never \(still so after waiting 0.3 s"):
        cluster.wait_for_resources(never, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - start >= 0.3
    with pytest.raises(ConfigError, match="never$"):
        cluster.wait_for_resources(never, timeout_s=0)


def test_launch_marker_is_checked_by_the_trial(tmp_path):
    path, nonce = cluster.write_launch_marker(tmp_path)
    cluster.verify_launch_marker(path, nonce, str(tmp_path))
    with pytest.raises(cluster.StorageNotShared, match="does not see the storage root"):
        cluster.verify_launch_marker(path, "another launch", str(tmp_path))
    cluster.remove_launch_marker(path)
    with pytest.raises(cluster.StorageNotShared):
        cluster.verify_launch_marker(path, nonce, str(tmp_path))


def test_server_command_keeps_the_backend_off_the_command_line(tmp_path, monkeypatch):
    from dinolab.serve import server_command

    pytest.importorskip("psycopg2")
    from sqlalchemy.engine import make_url

    cmd, env = server_command("postgresql://lab@db/mlflow", str(tmp_path / "art"), port=5055, workers=2)
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("://lab@db/mlflow")
    make_url(env["MLFLOW_BACKEND_STORE_URI"]).get_dialect().import_dbapi()  # a driver that is installed
    assert not any("postgresql" in c for c in cmd)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"  # loopback unless told otherwise
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "art")
    assert (tmp_path / "art").is_dir()
    cmd, env = server_command("postgres://lab@db/mlflow", "s3://bucket/mlflow", host="0.0.0.0", allowed_hosts="tracking.lab",
                              app_name="basic-auth")
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql") and "postgres://" not in env["MLFLOW_BACKEND_STORE_URI"]
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "tracking.lab" and cmd[cmd.index("--app-name") + 1] == "basic-auth"
    monkeypatch.setenv("DINOLAB_HOME", str(tmp_path / "home"))
    _, env = server_command()
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="is a tracking server"):
        server_command("http://alice:hunter2@tracking:5000")
    with pytest.raises(ConfigError) as e:
        server_command("http://alice:hunter2@tracking:5000")
    assert "hunter2" not in str(e.value)
