"""Distributed set-up under ``torchrun``, shared by training and evaluation.

torchrun gives every process ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a command runs
as the single process 0 of 1. On CUDA each process takes the GPU of its local rank; the process group
is NCCL on CUDA and gloo on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch: ``rank`` of ``world_size``, its ``device``, and whether it
    created the process group (and so destroys it at the end)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_environment() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> Launch:
    """Join the launch: the local GPU on CUDA, and the process group, created here when the caller has none."""
    rank, world, local_rank = launch_environment()
    if world <= 1:
        return Launch(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Launch(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group)


def cpu_group(launch: Launch):
    """A process group for object broadcasts and barriers on the CPU whatever the backend (None: the default
    group is gloo already, or there is one process)."""
    if launch.world_size <= 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def finish_distributed(launch: Launch) -> None:
    """Destroy the process group if this launch created it."""
    if launch.world_size > 1 and launch.owns_group and dist.is_initialized():
        dist.destroy_process_group()
