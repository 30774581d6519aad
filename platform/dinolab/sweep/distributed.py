"""A data-parallel worker group inside one Ray Tune trial (Ray 2.60 cannot hand a TorchTrainer to a Tuner).

The trial's placement group holds an empty head bundle (the trial function itself) and one bundle of
``cpus_per_worker`` CPUs / ``gpus_per_worker`` GPUs per worker. ``WorkerGroupTrainer`` starts one Ray
actor per worker bundle; rank 0 picks a TCP port on its node, every actor joins the process group
(``gloo`` on CPU, ``nccl`` on GPU) and runs ``dinolab.train.loop.train``, which already shards the data
(DistributedSampler), wraps the student in DDP, splits the total batch over the workers, all-reduces
the DINO center and logs / checkpoints on rank 0 only.

Rank 0 writes the epoch metrics straight into the trial's MLflow run (before its checkpoint, as in one
process); the epoch events (heartbeat, Tune reports) are drained back to the trial function. When any
worker fails or dies the whole group is killed (the others would wait in a collective) and the first
error is re-raised, so the trial is retried from its latest checkpoint like a one-process trial.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

GROUP_TIMEOUT = timedelta(minutes=10)  # a collective waiting longer than this means a peer is gone


def bundles(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> list[dict[str, float]]:
    """Placement-group bundles of a trial: one worker trains in the trial's own process; N > 1 workers
    get an empty head bundle (the trial function) plus one bundle each."""
    worker = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker:
        worker["GPU"] = float(gpus_per_worker)
    if workers == 1:
        return [worker]
    return [{}] + [dict(worker) for _ in range(workers)]


class _TrainWorker:
    """One rank of the group (a threaded Ray actor: ``train`` runs while ``drain`` is polled)."""

    def __init__(self) -> None:
        self._events: list[tuple[int, dict]] = []
        self._lock = threading.Lock()

    def address(self) -> tuple[str, int]:
        import socket

        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def drain(self) -> list[tuple[int, dict]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def _record(self, epoch: int, metrics: dict) -> None:
        with self._lock:
            self._events.append((epoch, dict(metrics)))

    def train(self, cfg_dict: dict, rank: int, world_size: int, host: str, port: int, workdir: str, resume: bool,
              tracking_uri: Optional[str], run_id: Optional[str], should_stop: Optional[Callable[[], bool]]):
        import torch
        import torch.distributed as dist

        from dinolab.config import build_config
        from dinolab.track.reporter import MemoryReporter
        from dinolab.train.loop import train

        cfg = build_config(cfg_dict)
        gpu = torch.cuda.is_available() and cfg.train.device in ("auto", "cuda")
        if gpu:  # Ray shows each worker only its own GPU(s): it is cuda:0 here
            cfg.train.device = "cuda:0"
            torch.cuda.set_device(0)
        dist.init_process_group(
            "nccl" if gpu else "gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=world_size, timeout=GROUP_TIMEOUT
        )
        try:
            if rank == 0:
                from dinolab.track.contract import WORLD_SIZE
                from dinolab.track.mlflow_store import MLflowReporter, client_for

                reporter = MLflowReporter(client_for(tracking_uri), run_id)
                reporter.set_tags({WORLD_SIZE: str(dist.get_world_size())})
            else:
                reporter = MemoryReporter()  # train() logs on rank 0 only
            return train(cfg, reporter, workdir=Path(workdir), resume=resume, should_stop=should_stop, on_epoch_end=self._record)
        finally:
            dist.destroy_process_group()


class WorkerGroupTrainer:
    """``train``'s signature, run on ``workers`` Ray actors in the current trial's placement group."""

    def __init__(self, workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, poll_s: float = 0.5) -> None:
        if workers < 2:
            raise ValueError(f"a worker group needs workers >= 2, got {workers}")
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.poll_s = poll_s

    def _actors(self):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote = ray.remote(max_concurrency=2)(_TrainWorker)
        pg = ray.util.get_current_placement_group()
        actors = []
        for rank in range(self.workers):
            options = {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}
            if pg is not None:
                # bundles(): index 0 is the empty head bundle when it exists (Tune drops it from the pg)
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=rank, placement_group_capture_child_tasks=False
                )
            actors.append(remote.options(**options).remote())
        return actors

    def __call__(self, cfg, reporter, *, workdir: Path, resume: bool = True,
                 should_stop: Optional[Callable[[], bool]] = None,
                 on_epoch_end: Optional[Callable[[int, dict], None]] = None):
        import ray

        from dinolab.config import config_to_dict

        run_id = getattr(reporter, "run_id", None)
        tracking_uri = getattr(getattr(reporter, "client", None), "tracking_uri", None)
        if run_id is None or tracking_uri is None:
            raise TypeError("WorkerGroupTrainer needs an MLflowReporter: rank 0 logs into the same run")
        cfg_dict = config_to_dict(cfg)
        actors = self._actors()
        try:
            host, port = ray.get(actors[0].address.remote())
            pending = [
                actor.train.remote(cfg_dict, rank, self.workers, host, port, str(workdir), resume, tracking_uri, run_id, should_stop)
                for rank, actor in enumerate(actors)
            ]
            futures = list(pending)
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=self.poll_s)
                for ref in done:
                    _get(ref)  # raises the first failure (the finally below kills the rest)
                self._forward(actors[0], on_epoch_end)
            result = _get(futures[0])
            self._forward(actors[0], on_epoch_end)
            return result
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    @staticmethod
    def _forward(rank0, on_epoch_end) -> None:
        import ray

        try:
            events = ray.get(rank0.drain.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            return  # the group is failing; the error surfaces from its train() result
        if on_epoch_end is not None:
            for epoch, metrics in events:
                on_epoch_end(epoch, metrics)


def _get(ref):
    """ray.get that re-raises a worker's own exception (TrainingCancelled, InjectedFault, ...)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as e:
        raise RuntimeError(f"a training worker died: {e}") from None
