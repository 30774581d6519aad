"""Data parallelism of a trial: 2 gloo workers on half batches == 1 worker on the whole batch.

Each worker runs the training loop's own building blocks (build_networks, build_criterion,
param_groups, clip_gradients, TeacherPolicy, DDP as train() wraps the student) for a few steps on a
fixed set of crops; rank r takes rows [r*B/2, (r+1)*B/2) of every crop. Matching needs the DDP
gradient average AND the all-reduced DINO center (Eq. 4 over the global batch); the negative control
replaces the center's all-reduce with the identity and must not match. The Ray worker-group path
(dinolab.sweep.distributed) is exercised end to end in tests/test_sweep_ray.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from dinolab.config import build_config
from process_helpers import free_port

TOTAL_BATCH, STEPS, N_LOCAL = 8, 3, 2
pytestmark = pytest.mark.slow  # spawns two torch processes (tens of seconds on a busy 2-core machine)
# The tiny experiment on a batch of 8 without drop path. No BatchNorm in the head: on CPU each gloo worker
# normalises over its own half batch (SyncBatchNorm is CUDA-only), so two workers cannot match one worker.
OVERRIDES = ("train.batch_size=8", "model.drop_path_rate=0.0", "dino.use_bn_in_head=false")


def _cfg_dict(tiny_config) -> dict:
    from dinolab.config import config_to_dict

    return config_to_dict(tiny_config(*OVERRIDES))


def _crops(steps: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    return [[torch.randn(TOTAL_BATCH, 3, 32, 32, generator=g) for _ in range(2)]
            + [torch.randn(TOTAL_BATCH, 3, 16, 16, generator=g) for _ in range(N_LOCAL)] for _ in range(steps)]


def _run(rank: int, world: int, cfg_dict: dict, crops, skip_center_reduce: bool) -> tuple[list[float], torch.Tensor]:
    """STEPS optimizer steps on this rank's share of each crop batch -> (global mean losses, center)."""
    import torch.distributed as dist
    from torch import nn

    from dinolab.train.loop import seed_everything
    from dinolab.train.loop import world as loop_world
    from dinolab.train.optim import clip_gradients, param_groups
    from dinolab.train.setup import build_criterion, build_networks, unwrap
    from dinolab.train.teacher import TeacherPolicy

    torch.set_num_threads(1)
    cfg = build_config(cfg_dict)
    if skip_center_reduce:
        import dinolab.losses.dino as dino_loss

        dino_loss.all_reduce_sum = lambda t: t  # the negative control: each worker centers on its own half
    assert loop_world() == (rank, world)  # what train() sees: this rank, the world size
    seed_everything(0)
    student, teacher = build_networks(cfg)  # same seed -> same initial weights on every rank
    if world > 1:
        student = nn.parallel.DistributedDataParallel(student)
    criterion = build_criterion(cfg, 2 + N_LOCAL)
    optimizer = torch.optim.AdamW(param_groups(unwrap(student)), lr=1e-3, weight_decay=0.04)
    policy = TeacherPolicy("ema")
    share = TOTAL_BATCH // world
    losses = []
    for step in range(STEPS):
        mine = [c[rank * share:(rank + 1) * share] for c in crops[step]]
        t_out = teacher(mine[:2])
        s_out = student(mine)
        loss = criterion(s_out.logits, t_out.logits, 0.04).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(unwrap(student), 3.0)
        optimizer.step()
        policy.after_step(unwrap(student), teacher, 0.99)
        criterion.update_center(t_out.logits.float())
        mean_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean_loss)
        losses.append(float(mean_loss) / world)
    return losses, criterion.center.detach().clone()


def _worker(rank: int, world: int, port: int, cfg_dict: dict, crops, out: str) -> None:
    """Both runs in one pair of processes: the real one, then the negative control."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for skip in (False, True):
            losses, center = _run(rank, world, cfg_dict, crops, skip)
            torch.save({"losses": losses, "center": center}, f"{out}.{'skip' if skip else 'full'}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_match_one_worker_on_the_total_batch(tmp_path, tiny_config):
    cfg_dict, crops = _cfg_dict(tiny_config), _crops(STEPS)
    ref_losses, ref_center = _run(0, 1, cfg_dict, crops, skip_center_reduce=False)
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, free_port(), cfg_dict, crops, out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.full.{r}") for r in range(2)]
    control = [torch.load(f"{out}.skip.{r}") for r in range(2)]

    for r in ranks:  # both ranks hold the same center, equal to the one-worker center
        torch.testing.assert_close(r["center"], ref_center, rtol=1e-4, atol=1e-6)
    assert ranks[0]["losses"] == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert ref_center.abs().sum() > 0

    gap = (control[0]["center"] - ref_center).abs().max().item()
    assert gap > 1e-3, f"skipping the center all-reduce still matched (gap {gap})"
    assert control[0]["losses"][-1] != pytest.approx(ref_losses[-1], rel=1e-4, abs=1e-6)
