"""Two gloo processes: every cross-worker statistic of the losses equals the single-process value over the
concatenated batch, and dropping the all-reduce (negative control) gives a different value."""

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinolab.losses import DINOLoss, RegionLoss, infonce_loss, sinkhorn_knopp

WORLD, B, K, N_CROPS, TOKENS = 2, 3, 8, 3, 4


def _full_batch():
    """Global-batch tensors; sample r*B + b lives on worker r (crop-major within each worker's rows)."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, WORLD * B, K, generator=g)  # (crop, sample, K)
    student = torch.randn(N_CROPS, WORLD * B, K, generator=g)
    region = torch.randn(2, WORLD * B, TOKENS, K, generator=g)
    return teacher, student, region


def _local_stats(r, teacher, student, region):
    mine = slice(r * B, (r + 1) * B)
    t = teacher[:, mine].reshape(-1, K)  # (2B, K) crop-major
    s = student[:, mine].reshape(-1, K)  # (N_CROPS*B, K)
    reg = region[:, mine]  # (2, B, TOKENS, K)
    dino = DINOLoss(K, N_CROPS)
    dino.update_center(t)
    region_loss = RegionLoss(K)
    region_loss.update_center([reg[0], reg[1]])
    return {
        "center": dino.center.clone(),
        "region_center": region_loss.center.clone(),
        "sinkhorn": sinkhorn_knopp(t / 0.1, 3),
        "infonce": infonce_loss(s, t, N_CROPS, 0.2),
    }


def _worker(r, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        stats = _local_stats(r, *_full_batch())
    finally:
        dist.destroy_process_group()
    control = _local_stats(r, *_full_batch())  # same computation, not distributed: no all-reduce / gather
    torch.save({"dist": stats, "control": control}, os.path.join(out_dir, f"rank{r}.pt"))


def test_two_process_statistics_equal_the_concatenated_batch(tmp_path):
    # fork: the workers need no fresh interpreter (a spawned one re-imports torch, seconds per worker)
    mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    teacher, student, region = _full_batch()
    t_full = teacher.reshape(-1, K)  # (2 * WORLD*B, K) crop-major

    # DINO center: (1 - m) * mean of all 2 * WORLD * B raw teacher rows, from c = 0 (closed form)
    center = 0.1 * t_full.mean(dim=0, keepdim=True)
    # EsViT region center: the mean over every teacher token of every worker
    region_center = 0.1 * region.reshape(-1, K).mean(dim=0, keepdim=True)
    # Sinkhorn: worker r's rows of the assignment computed over the whole batch at once
    q_full = sinkhorn_knopp(t_full / 0.1, 3).reshape(2, WORLD * B, K)
    # InfoNCE: with gathered keys, the mean of the workers' losses is the loss of the whole batch
    infonce = infonce_loss(student.reshape(-1, K), t_full, N_CROPS, 0.2)

    for r, res in enumerate(results):
        d, c = res["dist"], res["control"]
        assert torch.allclose(d["center"], center, atol=1e-6)
        assert not torch.allclose(c["center"], center, atol=1e-3)
        assert torch.allclose(d["region_center"], region_center, atol=1e-6)
        assert not torch.allclose(c["region_center"], region_center, atol=1e-3)
        q_r = q_full[:, r * B:(r + 1) * B].reshape(-1, K)
        assert torch.allclose(d["sinkhorn"], q_r, atol=1e-5)
        assert not torch.allclose(c["sinkhorn"], q_r, atol=1e-3)
    mean_dist = sum(res["dist"]["infonce"] for res in results) / WORLD
    mean_control = sum(res["control"]["infonce"] for res in results) / WORLD
    assert torch.allclose(mean_dist, infonce, atol=1e-5)
    assert not torch.allclose(mean_control, infonce, atol=1e-3)
