"""The GPU check's short training: experiments/cifar10_vit_tiny.yaml, shortened, through the platform's loop.

``dinolab.train.loop.train`` runs as a trial would (bf16 autocast, fused AdamW, the fast multi-crop with its
stage 2 on the device, k-NN every epoch against random init, attention maps, linear probe), but reports to a
``FileReporter`` under the output folder instead of MLflow, with no Ray. The cost figures are the trial's own
(``dinolab.trial.cost_hours``; ``cuda_peak_mb`` from the loop) for one GPU (``resources.gpus_per_worker=1``).

Data: an ImageFolder tree (train/, test/) or the cifar10-jpeg.tar.gz archive (unpacked into scratch space),
else the embedded synthetic shapes. Only the schedule is shortened (epochs, steps per epoch, warm-ups in
proportion) and the evaluation banks capped; the model, crops, head and loss are the experiment's.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Optional

from dinolab.track import contract

from .context import repo_root
from .gpu_check import Check

EXPERIMENT = Path("experiments") / "cifar10_vit_tiny.yaml"
ARCHIVE = "cifar10-jpeg.tar.gz"
KNN_TRAIN, KNN_TEST = 5000, 1000  # evaluation banks per epoch (CIFAR); the synthetic set is smaller anyway


def default_data() -> Optional[Path]:
    """The CIFAR-10 archive where scripts/gpu_wheels.sh puts it (.gpu/), else the shared copy, else None."""
    root = repo_root()
    for path in (root / ".gpu" / ARCHIVE, root / "shared" / "datasets" / ARCHIVE, root.parent / "shared" / "datasets" / ARCHIVE):
        if path.is_file():
            return path
    return None


def image_folder_root(path: Path) -> Optional[Path]:
    """``path`` or the one folder under it (to two levels) holding train/ and test/ (or val/)."""
    for cand in (path, *sorted(p for p in path.glob("*") if p.is_dir()), *sorted(p for p in path.glob("*/*") if p.is_dir())):
        if (cand / "train").is_dir() and ((cand / "test").is_dir() or (cand / "val").is_dir()):
            return cand
    return None


def prepare_data(path: Path, scratch: Path) -> Path:
    """An ImageFolder root from ``path`` (a tree, or a .tar.gz unpacked into ``scratch``); ValueError if neither."""
    path = Path(path)
    if path.is_dir():
        found = image_folder_root(path)
        if found is None:
            raise ValueError(f"{path}: no train/ and test/ (or val/) folders in it")
        return found
    if not path.is_file() or not path.name.endswith((".tar.gz", ".tgz")):
        raise ValueError(f"{path}: not an ImageFolder tree or a .tar.gz archive")
    dest = scratch / "data"
    dest.mkdir(parents=True, exist_ok=True)
    tar = shutil.which("tar")
    if tar is not None:  # several times faster than tarfile on 60,000 small files
        subprocess.run([tar, "xzf", str(path), "-C", str(dest)], check=True, timeout=300)
    else:
        with tarfile.open(path, "r:gz") as t:
            t.extractall(dest, filter="data")
    found = image_folder_root(dest)
    if found is None:
        raise ValueError(f"{path}: the archive holds no train/ and test/ folders")
    return found


def overrides(data_root: Optional[Path], epochs: int, steps: int, workers: int) -> list[str]:
    """The experiment's --set list for the short run (see the module doc)."""
    out = [
        f"train.epochs={epochs}", f"train.steps_per_epoch={steps}",
        f"train.warmup_epochs={max(1, epochs // 10)}",  # the experiment warms 10 of 100 epochs
        f"dino.warmup_teacher_temp_epochs={epochs * 3 // 10}",  # and the teacher temperature 30 of 100
        "eval.knn_every=1", "train.device=cuda", "train.progress=false", "train.keep_checkpoints=1",
        f"data.num_workers={workers}", "resources.gpus_per_worker=1",
    ]
    if data_root is None:
        out += ["data.name=synthetic", "data.root=null"]
    else:
        out += ["data.name=imagefolder", f"data.root={data_root}", f"eval.max_train_images={KNN_TRAIN}",
                f"eval.max_test_images={KNN_TEST}"]
    return out


def run_training(cfg, out: Path, workdir: Path, max_seconds: float) -> tuple[list[Check], dict]:
    """Train ``cfg``, reporting to out/; (checks, figures).

    Stops (TrainingCancelled, a failed check) once ``max_seconds`` have passed, so a slow machine cannot eat
    the time of a later run.
    """
    import gc
    import math

    import torch

    from dinolab.eval.collapse import detect_collapse
    from dinolab.track.reporter import FileReporter
    from dinolab.train.loop import TrainingCancelled, train
    from dinolab.trial import cost_hours

    gc.collect()  # what earlier steps left must not count in the trial's cuda_peak_mb
    torch.cuda.empty_cache()
    reporter = FileReporter(out)
    start = time.perf_counter()
    try:
        result = train(cfg, reporter, workdir=workdir, resume=False,
                       should_stop=lambda: time.perf_counter() - start > max_seconds)
    except TrainingCancelled as e:
        done = len(reporter.metrics)
        return [Check("finished within --train-max-seconds", False, f"{e}; {done} epochs logged in {max_seconds:g} s")], {
            "epochs_logged": done, contract.KNN_TOP1: reporter.history(contract.KNN_TOP1)}
    wall = time.perf_counter() - start
    final = dict(result.final)
    final.update(cost_hours(cfg, final[contract.LOOP_WALL_S], str(cfg.train.device)))
    h = result.history
    epochs = cfg.train.epochs
    knn, knn0 = h.get(contract.KNN_TOP1, []), final.get(contract.KNN_TOP1_RANDOM_INIT)
    collapsed, reason = detect_collapse(h, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
    expected_gpu_hours = final[contract.LOOP_WALL_S] / 3600.0
    checks = [
        Check(f"trained through train() on {cfg.train.device}", result.epochs_done == epochs and all(math.isfinite(v) for v in h.get("loss", [])),
              f"{result.epochs_done}/{epochs} epochs x {cfg.train.steps_per_epoch} steps, loss {h['loss'][0]:.4g} -> {h['loss'][-1]:.4g}"),
        Check("k-NN every epoch and at random init", len(knn) == epochs and knn0 is not None,
              f"random init {knn0:.2f}%, epochs: {', '.join(f'{v:.1f}' for v in knn)}" if knn0 is not None else f"{len(knn)} values"),
        Check("k-NN above random init at the end", None if not knn or knn0 is None else knn[-1] > knn0,
              f"{knn[-1]:.2f}% vs {knn0:.2f}%" if knn and knn0 is not None else "-", required=False),
        Check("metrics written by the FileReporter", len(lines) == epochs, f"{len(lines)} lines in metrics.jsonl"),
        Check("cuda_peak_mb logged", final.get(contract.CUDA_PEAK_MB, 0.0) > 0, f"{final.get(contract.CUDA_PEAK_MB, 0.0):.1f} MiB"),
        Check("gpu_hours = loop wall time x 1 GPU",
              final[contract.GPU_HOURS] > 0 and math.isclose(final[contract.GPU_HOURS], expected_gpu_hours),
              f"{final[contract.GPU_HOURS]:.6f} h for {final[contract.LOOP_WALL_S]:.1f} s"),
        Check("no collapse detected", not collapsed, reason or "-", required=False),
    ]
    figures = {"final": final, "history": h, "wall_s": wall, "collapsed": collapsed, "collapse_reason": reason,
               "epochs": epochs, "steps_per_epoch": cfg.train.steps_per_epoch, "batch_size": cfg.train.batch_size,
               "data": cfg.data.name, "data_root": cfg.data.root}
    return checks, figures
