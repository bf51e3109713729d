"""Distillation sharded across processes (``torchrun``): rank r distils the batches b with
b % world_size == r; rank 0 gathers the whole set. Batches are independent and seeded by their
index, so the result equals a single-process run."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .dataset import DistilledSet
from .distiller import DistillConfig, distill


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: Optional[str] = None) -> torch.device:
    """Join the process group started by torchrun; returns this rank's device (``cuda:LOCAL_RANK``
    with NCCL when a GPU is available and ``device`` is not ``"cpu"``, else the CPU with gloo)."""
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def distill_sharded(model: nn.Module, image_size: int, config: DistillConfig, **kwargs) -> Optional[DistilledSet]:
    """Run :func:`genie.distill.distill` on this rank's share; rank 0 returns the whole set,
    other ranks return None. The process group must be initialised."""
    rank, world = dist.get_rank(), dist.get_world_size()
    config = DistillConfig(**{**config.__dict__}).validate()
    mine = [b for b in range(config.num_batches) if b % world == rank]
    part = distill(model, image_size, config, batches=mine, progress=kwargs.pop("progress", rank == 0), **kwargs)
    payload = {
        "batches": mine,
        "images": part.images.cpu(),
        "losses": part.losses.cpu(),
        "per_layer": part.per_layer.cpu(),
        "metadata": part.metadata,
        "layer_names": part.layer_names,
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, payload)
    if rank != 0:
        return None
    sizes = config.batch_sizes()
    by_batch = {}
    for item in gathered:
        offset = 0
        for j, b in enumerate(item["batches"]):
            by_batch[b] = (item["images"][offset : offset + sizes[b]], item["losses"][:, j], item["per_layer"][j])
            offset += sizes[b]
    order = list(range(config.num_batches))
    metadata = dict(gathered[0]["metadata"])
    metadata.update(
        batches=order,
        final_loss=[float(by_batch[b][1][-1]) for b in order],
        seconds=max(item["metadata"]["seconds"] for item in gathered),
        world_size=world,
    )
    return DistilledSet(
        torch.cat([by_batch[b][0] for b in order]),
        metadata,
        torch.stack([by_batch[b][1] for b in order], dim=1),
        torch.stack([by_batch[b][2] for b in order]),
        gathered[0]["layer_names"],
    )
