"""scripts/gpu_check.sh on the CPU side: arguments, dry run, statuses and the summary, the run without CUDA
(every GPU step says it cannot run, exit 3) with Ray and MLflow unimportable, and the pieces the GPU steps
use that run on a CPU (the training step's plumbing, cost figures, gradient comparison). Never a fake GPU:
the no-CUDA run hides the devices with CUDA_VISIBLE_DEVICES."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch

from dinolab.bench import gpu_check as gc
from dinolab.bench.gpu_check import FAIL, NO_CUDA, PASS, Check, StepResult, exit_code, format_summary, step_status


def test_arguments(monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    a = gc.parse_args(["--synthetic"])
    assert a.out.name == "gpu_check_out" and a.data is None and a.only is None
    assert (a.train_epochs, a.train_steps, a.train_max_seconds) == (gc.TRAIN_EPOCHS, gc.TRAIN_STEPS, gc.TRAIN_MAX_S)
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    a = gc.parse_args(["--only", "device", "training", "--train-epochs", "3", "--data", str(tmp_path)])
    assert a.out == tmp_path / "o" and a.only == ["device", "training"] and a.train_epochs == 3 and a.data == tmp_path
    for bad in (["--only", "gpu"], ["--train-steps", "0"], ["--train-max-seconds", "-1"], ["--data", str(tmp_path / "none")]):
        with pytest.raises(SystemExit) as e:
            gc.parse_args(bad)
        assert e.value.code == 2


def test_dry_run_lists_the_steps_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert gc.main(["--dry-run", "--out", str(out), "--synthetic", "--train-epochs", "5"]) == 0
    text = capsys.readouterr().out
    for name in gc.STEP_NAMES:
        assert f" {name} " in text
    assert "5 epochs" in text and "synthetic" in text and str(out) in text
    assert not out.exists()
    assert gc.main(["--dry-run", "--only", "numerics"]) == 0
    text = capsys.readouterr().out
    assert "1. numerics" in text and "2." not in text


def test_statuses_exit_codes_and_summary():
    ok, bad = Check("a", True, "fine"), Check("b", False, "broken")
    info_no = Check("target", False, "slow", required=False)
    assert step_status([ok, info_no]) == PASS  # an info check never counts
    assert step_status([ok, bad]) == FAIL
    assert step_status([ok], error="RuntimeError: x") == FAIL
    assert step_status([info_no]) == FAIL  # checked nothing: not a pass
    assert step_status([info_no], no_cuda=True) == NO_CUDA
    assert step_status([bad], no_cuda=True) == FAIL  # a failure outranks the missing device

    results = [StepResult("device", PASS, [ok, info_no], seconds=1.2), StepResult("bench", NO_CUDA, [])]
    assert exit_code(results) == 3
    assert exit_code(results[:1]) == 0
    assert exit_code(results + [StepResult("numerics", FAIL, [bad])]) == 1
    table = format_summary(results + [StepResult("numerics", FAIL, [bad])])
    lines = table.splitlines()
    assert lines[0].split() == ["step", "status", "s", "check", "result", "detail"]
    assert lines[2].split()[:5] == ["device", "PASS", "1", "a", "PASS"]
    assert lines[3].split()[:3] == ["target", "info:no", "slow"]  # second check of the step: no step columns
    assert lines[-1] == "FAIL: a step failed (exit 1)"
    col = lines[0].index("check")  # columns aligned under their heads
    assert lines[2][col:].startswith("a ") and lines[3][col:].startswith("target ") and lines[4][col:].startswith("-")

    again = StepResult.from_dict(json.loads(json.dumps(results[0].to_dict())))
    assert again == results[0]


BLOCK_RAY_MLFLOW = textwrap.dedent("""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "mlflow"):
                raise ImportError(f"{name} is blocked: the GPU machine has no " + name.split(".")[0])
            return None

    sys.meta_path.insert(0, Blocker())
""")


def test_no_cuda_run_without_ray_or_mlflow(tmp_path, repo_root):
    """The whole check on a machine without CUDA: device step NO-CUDA, every GPU step reported as not run,
    exit 3, every file written; and every module the GPU steps use imports without Ray or MLflow."""
    out = tmp_path / "out"
    code = BLOCK_RAY_MLFLOW + textwrap.dedent(f"""
        from dinolab.bench.gpu_check import main
        code = main(["--out", {str(out)!r}, "--synthetic"])
        import dinolab.bench.gpu_numerics, dinolab.bench.gpu_training, dinolab.trial, dinolab.track.reporter
        import dinolab.eval.collapse, dinolab.bench.augment, dinolab.bench.step
        assert "ray" not in sys.modules and "mlflow" not in sys.modules
        sys.exit(code)
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo_root / "platform")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["exit_code"] == 3
    steps = {s["name"]: s for s in data["steps"]}
    assert list(steps) == list(gc.STEP_NAMES)
    assert {s["status"] for s in steps.values()} == {NO_CUDA}
    device = {c["name"]: c for c in steps["device"]["checks"]}
    assert device["packages dinolab imports"]["passed"] and device["dinolab's config and training loop import"]["passed"]
    assert steps["device"]["figures"]["cuda_available"] is False
    for name in ("bench", "numerics", "training"):
        assert steps[name]["checks"] == [{"name": "needs a CUDA device", "passed": None, "detail": "none available: not run",
                                          "required": False}]
        assert json.loads((out / "steps" / f"{name}.json").read_text())["status"] == NO_CUDA
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in proc.stdout and summary.strip().endswith("(exit 3)")
    assert "step device" in (out / "gpu_check.log").read_text()


def test_shell_dry_run(repo_root):
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "gpu_check.sh"), "--dry-run", "--synthetic"], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(f" {name} " in proc.stdout for name in gc.STEP_NAMES)


def test_peak_table_matches_variants_first():
    from dinolab.bench.gpu_device import dense_bf16_peak

    assert dense_bf16_peak("NVIDIA H200")[0] == 989.0
    assert dense_bf16_peak("NVIDIA H200 NVL")[0] == 835.0
    assert dense_bf16_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert dense_bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert dense_bf16_peak("NVIDIA GeForce GTX 1080") is None


def test_gradient_direction():
    from dinolab.bench.gpu_numerics import grad_direction, rel

    g = {"w": torch.tensor([3.0, -4.0]), "b": torch.tensor([1.0, 0.0]), "z": torch.zeros(2)}
    same = grad_direction(g, {k: 2.5 * v for k, v in g.items()})  # clipping rescales: the direction stays
    assert same["median"] == pytest.approx(1.0) and same["parameters"] == 2 and same["missing"] == 0
    turned = grad_direction(g, {"w": torch.tensor([4.0, 3.0]), "b": -g["b"], "z": torch.ones(2)})
    assert turned["min"] == pytest.approx(-1.0) and turned["worst"] == "b"
    assert sorted([0.0, -1.0, 0.0])[1] == turned["median"]  # w orthogonal (0), b opposite (-1), z zero vs ones (0)
    assert grad_direction(g, {"w": g["w"]})["missing"] == 2
    assert rel(10.1, 10.0) == pytest.approx(0.01)


def test_cost_hours():
    from dinolab.config import build_config
    from dinolab.trial import cost_hours

    cfg = build_config({"resources": {"workers": 2, "cpus_per_worker": 4}})
    assert cost_hours(cfg, 1800.0, "cpu") == {"cpu_hours": 4.0, "gpu_hours": 0.0}
    assert cost_hours(cfg, 1800.0, "cuda") == {"cpu_hours": 4.0, "gpu_hours": 1.0}  # none requested: a whole card each
    half = build_config({"resources": {"gpus_per_worker": 0.5}, "train": {"threads": 3}})
    assert cost_hours(half, 3600.0, "cuda:1") == {"cpu_hours": 3.0, "gpu_hours": 0.5}


def test_training_data_and_config(tmp_path):
    from dinolab.bench.context import repo_root
    from dinolab.bench.gpu_training import EXPERIMENT, overrides, prepare_data
    from dinolab.config import load_experiment

    cfg = load_experiment(repo_root() / EXPERIMENT, overrides(None, 12, 40, 4))
    assert (cfg.data.name, cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.warmup_epochs) == ("synthetic", 12, 40, 1)
    assert (cfg.dino.warmup_teacher_temp_epochs, cfg.resources.gpus_per_worker, cfg.train.device) == (3, 1.0, "cuda")
    assert (cfg.model.arch, cfg.model.patch_size, cfg.crops.local_number, cfg.dino.out_dim) == ("vit_tiny", 4, 6, 4096)

    tree = tmp_path / "src" / "cifar10"
    for split in ("train", "test"):
        (tree / split / "cat").mkdir(parents=True)
        (tree / split / "cat" / "0.jpg").write_bytes(b"x")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tree, arcname="cifar10")
    root = prepare_data(archive, tmp_path / "scratch")
    assert root == tmp_path / "scratch" / "data" / "cifar10" and (root / "train" / "cat" / "0.jpg").is_file()
    assert prepare_data(tmp_path / "src", tmp_path) == tree
    cfg = load_experiment(repo_root() / EXPERIMENT, overrides(root, 12, 40, 4))
    assert cfg.data.name == "imagefolder" and cfg.data.root == str(root) and cfg.eval.max_test_images == 1000
    with pytest.raises(ValueError, match="train/"):
        prepare_data(tmp_path / "scratch" / "data" / "cifar10" / "train", tmp_path)


def test_training_step_plumbing_on_cpu(tmp_path, tiny_config):
    """The training step's own code on a tiny CPU trial (the tests' tiny experiment with the step's overrides): it
    trains through train(), the FileReporter writes one line per epoch, and the GPU-only figures read as failures on a
    CPU (no CUDA peak, no GPU-hours)."""
    from dinolab.bench.gpu_training import overrides, run_training

    cfg = tiny_config(*overrides(None, 2, 2, 0), "train.device=cpu", "train.threads=1", "eval.linear=false")
    checks, fig = run_training(cfg, tmp_path / "training", tmp_path / "trial", max_seconds=300)
    got = {c.name: c for c in checks}
    assert got["trained through train() on cpu"].passed and got["k-NN every epoch and at random init"].passed
    assert got["metrics written by the FileReporter"].passed
    assert not got["cuda_peak_mb logged"].passed and not got["gpu_hours = loop wall time x 1 GPU"].passed
    assert not got["k-NN above random init at the end"].required
    lines = [json.loads(x) for x in (tmp_path / "training" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1] and all("knn_top1" in x for x in lines)
    assert fig["final"]["gpu_hours"] == 0.0 and fig["epochs"] == 2

    checks, fig = run_training(cfg, tmp_path / "training", tmp_path / "trial2", max_seconds=0.0)
    assert [(c.name, c.passed) for c in checks] == [("finished within --train-max-seconds", False)]
    assert not (tmp_path / "training" / "metrics.jsonl").exists()  # a new reporter starts from empty files


def test_benchmarks_say_when_no_gpu_record_is_there(tmp_path):
    from dinolab.bench.markdown import assemble_markdown

    cpu = {"slug": "cpu-x", "cpu": "X", "cpus": 2, "gpu": None}
    (tmp_path / "cpu-x.json").write_text(json.dumps({"machine": cpu, "updated": "2026-01-01", "records": {}}))
    text = assemble_markdown(tmp_path)
    assert "No GPU record yet" in text and "scripts/gpu_check.sh" in text
    gpu = {**cpu, "slug": "nvidia-h200", "gpu": "NVIDIA H200"}
    (tmp_path / "nvidia-h200.json").write_text(json.dumps({"machine": gpu, "updated": "2026-01-01", "records": {}}))
    assert "No GPU record yet" not in assemble_markdown(tmp_path)


def test_numerics_plumbing_on_cpu():
    """The numerics step's own code on a tiny step on the CPU, where autocast is off: every variant starts from the
    same weights and batch, so each loss equals fp32's exactly; the grad scaler is disabled there, so its check fails."""
    from dinolab.bench.gpu_numerics import FP16_STEPS, numerics

    spec = {"model": {"arch": "vit_tiny", "patch_size": 4, "embed_dim": 32, "depths": [1], "num_heads": 2, "drop_path_rate": 0.0},
            "crops": {"global_size": 16, "local_size": 8, "local_number": 2},
            "dino": {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16}, "train": {"batch_size": 4}}
    checks, fig = numerics(torch.device("cpu"), spec)
    got = {c.name: c.passed for c in checks}
    assert fig["bf16_loss"] == fig["fp32_loss"] == fig["cpu_loss"] == fig["fp16"]["losses"][0]
    assert fig["bf16_grad_cos"]["median"] == pytest.approx(1.0) and fig["bf16_grad_cos"]["missing"] == 0
    assert fig["fp16"]["steps_applied"] == FP16_STEPS and not fig["fp16"]["scaler_enabled"]
    assert got == {"fp32 step: loss and gradients finite": True, "bf16 vs fp32: loss": True,
                   "bf16 step: gradients and parameters finite": True, "bf16 vs fp32: gradient direction": True,
                   "fp16 + grad scaler: steps": False, "fp16 vs fp32: loss": True, "fp32 cpu vs CPU: loss": True,
                   "fp32 cpu vs CPU: gradient direction": True}
