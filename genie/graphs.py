"""Running a training step many times, optionally as a replayed CUDA graph.

The steps of distillation and reconstruction keep every counter, schedule and loss record on
the device, so one step can be captured in a CUDA graph and replayed without Python or launch
overhead. On a CPU, or with ``cuda_graph=False``, the same step simply runs eagerly.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

WARMUP_STEPS = 3  # eager steps on a side stream before capture (lazy initialisation, cuDNN autotune)


def run_steps(step: Callable[[], None], iters: int, device: torch.device, cuda_graph: bool,
              after: Callable[[int], None]) -> bool:
    """Run ``step()`` ``iters`` times; ``after(done)`` runs on the host after each step (it may
    read device buffers, which synchronises, so it should do so only every so often).

    With ``cuda_graph`` on a CUDA device, the first steps run eagerly on a side stream, then one
    step is captured and replayed for the rest. If capture fails, the run continues eagerly with a
    warning. Returns whether a graph was used.
    """
    done = 0
    use_graph = bool(cuda_graph) and device.type == "cuda" and iters > WARMUP_STEPS
    if not use_graph:
        for _ in range(iters):
            step()
            done += 1
            after(done)
        return False
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
            done += 1
    torch.cuda.current_stream(device).wait_stream(side)
    for d in range(1, done + 1):
        after(d)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()  # recorded, not executed
    except Exception as exc:  # capture is fragile across versions and ops: fall back, never fail the run
        warnings.warn(f"CUDA graph capture failed ({exc.__class__.__name__}: {exc}); continuing without it")
        graph = None
    while done < iters:
        if graph is not None:
            graph.replay()
        else:
            step()
        done += 1
        after(done)
    return graph is not None
