"""What block reconstruction trains each unit on, computed with few forward passes.

For unit k, reconstruction needs the FP teacher's input and output of unit k on every
calibration image, and the quantized student's input of unit k (units before it already
quantized). Capturing each by a forward pass stopped at unit k costs a network of U units about
U/2 full forward passes of each model.

* Teacher (:class:`TeacherActivations`): one forward pass captures the inputs and outputs of a
  group of consecutive units, as many as fit in a memory budget; a network whose activations fit
  costs one forward pass.
* Student (:func:`chained_units`): where unit k's input is the very tensor unit k-1 returned,
  unmodified (checked once, on one image, in both models), the student's input of unit k is unit
  k-1's output on the student's input of unit k-1, which reconstruction computes anyway when it
  measures unit k-1's final error. Other units (after a ReLU, pooling, ... between units) take a
  forward pass of the student stopped at the unit.

The values are those of the stopped forward passes, to float rounding (oneDNN may pick another
kernel for another batch size).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .recon_primitives import capture, single_input, store_rows


class _Stop(Exception):
    pass


@torch.no_grad()
def chained_units(model: nn.Module, names: list, example: torch.Tensor) -> list:
    """``chained[k]``: on ``example``, unit ``names[k]``'s input is the tensor unit ``names[k-1]``
    returned (the same object, not modified in place since), with no other unit in between.
    ``chained[0]`` is False."""
    chained = [False] * len(names)
    last = {}  # the latest unit to finish: its index, output and the output's version counter
    hooks = []

    def started(k):
        def hook(module, args):
            x = single_input(module, args)
            prev = last.get("unit")
            chained[k] = prev is not None and prev[0] == k - 1 and x is prev[1] and x._version == prev[2]
        return hook

    def finished(k):
        def hook(module, args, out):
            last["unit"] = (k, out, out._version) if torch.is_tensor(out) else None
        return hook

    for k, name in enumerate(names):
        module = model.get_submodule(name)
        hooks += [module.register_forward_pre_hook(started(k)), module.register_forward_hook(finished(k))]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return chained


@torch.no_grad()
def unit_sizes(model: nn.Module, names: list, example: torch.Tensor) -> list:
    """Bytes per image of each unit's ``(input, output)`` on ``example`` (one image or more)."""
    sizes = {}
    hooks = []

    def hook(name):
        def grab(module, args, out):
            x = single_input(module, args)
            sizes[name] = (x.element_size() * x[0].numel(), out.element_size() * out[0].numel())
        return grab

    for name in names:
        hooks.append(model.get_submodule(name).register_forward_hook(hook(name)))
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return [sizes.get(n, (0, 0)) for n in names]


class TeacherActivations:
    """The teacher's input and output of each unit on all ``images``, captured group by group.

    ``take(k)`` returns ``(fp_in, fp_out)`` of unit k (each ``(N, ...)``) and forgets them; it
    runs one forward pass for unit k and the units after it whose tensors fit, with unit k's, in
    ``budget_bytes`` (a unit's input shared with the output before it counts once). Units must be
    taken in order.
    """

    def __init__(self, teacher: nn.Module, names: list, images: torch.Tensor, chunk: int, budget_bytes: int,
                 chained: list):
        self.teacher, self.names, self.images, self.chunk = teacher, names, images, chunk
        self.budget, self.chained = budget_bytes, chained
        self.sizes = unit_sizes(teacher, names, images[:1])
        self.cache = {}
        self.forward_passes = 0

    def take(self, k: int) -> tuple:
        if k not in self.cache:
            self._capture_from(k)
        return self.cache.pop(k)

    def _group(self, start: int) -> list:
        n, used, group = len(self.images), 0, []
        for k in range(start, len(self.names)):
            in_bytes, out_bytes = self.sizes[k]
            cost = n * (out_bytes + (0 if (group and self.chained[k]) else in_bytes))
            if group and used + cost > self.budget:
                break
            group.append(k)
            used += cost
        return group

    @torch.no_grad()
    def _capture_from(self, start: int) -> None:
        group, total = self._group(start), len(self.images)
        inputs, outputs, hooks = {}, {}, []
        offset = [0]

        def started(k):
            def hook(module, args):
                if not (k != group[0] and self.chained[k]):  # else: the output before it, stored already
                    inputs[k] = store_rows(inputs.get(k), single_input(module, args), offset[0], total)
            return hook

        def finished(k):
            def hook(module, args, out):
                outputs[k] = store_rows(outputs.get(k), out, offset[0], total)
                if k == group[-1]:
                    raise _Stop
            return hook

        for k in group:
            module = self.teacher.get_submodule(self.names[k])
            hooks += [module.register_forward_pre_hook(started(k)), module.register_forward_hook(finished(k))]
        try:
            for part in self.images.split(self.chunk):
                try:
                    self.teacher(part)
                except _Stop:
                    pass
                offset[0] += len(part)
        finally:
            for h in hooks:
                h.remove()
        self.forward_passes += 1
        for k in group:
            fp_in = outputs[k - 1] if (k != group[0] and self.chained[k]) else inputs[k]
            self.cache[k] = (fp_in, outputs[k])


def student_input(student: nn.Module, module: nn.Module, images: torch.Tensor, chunk: int,
                  previous_output: Optional[torch.Tensor], chained: bool) -> torch.Tensor:
    """The student's input of ``module`` on all ``images``: ``previous_output`` (the unit before's
    output on its own student input) when ``chained``, else a forward pass stopped at ``module``."""
    if chained and previous_output is not None:
        return previous_output
    return capture(student, module, images, chunk, with_output=False)[0]
