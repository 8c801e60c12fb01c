"""Data-parallel fine-tuning over several processes (torch.distributed; gloo on CPU, NCCL on GPUs).

``distributed_train(model, data, procs, **train_kwargs)`` runs :func:`depthcut.train.loop.train` in ``procs``
processes. Each process holds a replica wrapped in DistributedDataParallel and takes its share of every global
batch (the loader's seeded order is the same in all of them, each rank keeps rows ``rank::procs``), so the
averaged gradient is the single-process gradient of that batch: the result is the single-process result
(exactly, for networks without batch statistics; BatchNorm layers see their rank's share, as usual with DDP).
Rank 0's weights are copied back into ``model``; the history returned is rank 0's.

On CPU the processes are forked (the model and data need not be picklable: an fx-rewritten network is not);
on CUDA they are spawned, one GPU each (the model must then pickle). Under ``torchrun`` the same
:func:`train` call is already distributed: it shards its batches whenever a process group is initialised.
"""
from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


# a collective (or the rendezvous) that waits this long has lost a rank: fail with torch's error naming the op,
# rather than after torch's default 30 minutes
TIMEOUT = timedelta(minutes=5)


def _worker(rank: int, procs: int, model: nn.Module, data, train_kwargs: dict, folder: str, cuda: bool) -> None:
    from .loop import train

    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=procs, timeout=TIMEOUT)
    try:
        if cuda:
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(max(1, torch.get_num_threads() // procs))
        device = torch.device(f"cuda:{rank}" if cuda else "cpu")
        model = model.to(device)
        teacher = train_kwargs.get("teacher")
        if teacher is not None:
            train_kwargs = {**train_kwargs, "teacher": teacher.to(device)}
        replica = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        history = train(replica, data, **{**train_kwargs, "progress": rank == 0 and train_kwargs.get("progress", True)})
        if rank == 0:
            tmp = Path(folder) / "rank0.tmp"
            torch.save({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}, tmp)
            os.replace(tmp, Path(folder) / "rank0.pt")
        dist.barrier()                              # every rank is past its last collective
    except BaseException:
        dist.destroy_process_group()
        raise
    # Done: exit without tearing the replica and its process group down. That teardown can deadlock (1 run in
    # 5-10 here, and once in CI): freeing the DDP Reducer drops the last reference to the gloo group, whose
    # destructor joins gloo's work thread while holding the GIL, and that thread may be waiting for the GIL to
    # free a finished work's Python state. Nothing is left to free: rank 0's weights are on disk, and the
    # parent sees exit code 0.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def distributed_train(model: nn.Module, data, procs: int, **train_kwargs) -> dict:
    """``train(model, data, **train_kwargs)`` over ``procs`` data-parallel processes (module doc)."""
    from .loop import train

    if procs <= 1:
        return train(model, data, **train_kwargs)
    cuda = next(model.parameters()).is_cuda
    if cuda and torch.cuda.device_count() < procs:
        from ..errors import DepthcutError
        raise DepthcutError(f"{procs} recovery processes need {procs} GPUs, {torch.cuda.device_count()} visible")
    home = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="depthcut-ddp-") as folder:
        args = (procs, model.cpu() if not cuda else model, data, train_kwargs, folder, cuda)
        mp.start_processes(_worker, args=args, nprocs=procs, join=True, start_method="spawn" if cuda else "fork")
        result = torch.load(Path(folder) / "rank0.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(result["state"])
    model.to(home).eval()
    return result["history"]
