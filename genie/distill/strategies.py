"""The three distillers of GENIE-D as strategies: what each trains for a group of batches and how
a step's images come out of it (the loop around them, :func:`genie.distill.distill`, is shared).

* ``genie``     - generator + trained latent vectors (GLO-style), the paper's GENIE-D;
* ``generator`` - generator fed fixed Gaussian noise, only its weights trained ("GBA");
* ``direct``    - the pixels themselves optimised (ZeroQ-style "DBA").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..optim import DevicePlateau
from .generator import LATENT_DIM, StackedGenerator

if TYPE_CHECKING:  # only for annotations: the distiller imports this module
    from .distiller import DistillConfig


class _Strategy:
    """What one distiller trains for ``G`` batches of ``n`` images (one CPU generator per batch in
    ``gens`` draws its initial values), and how a step's images come out of it.

    ``params``: the trained tensors; :meth:`learning_rates` gives one learning-rate tensor per
    parameter for the current step (broadcast over its leading batch dimension), computed on the
    device from ``step`` (the device step counter); :meth:`after_step` sees each batch's loss ``(G,)``.
    """

    default_iters: int  # iterations per batch when DistillConfig.iters is None
    uses_generator: bool  # images come out of a StackedGenerator (image size divisible by 4)
    images_are_params: bool  # a step's images are the trained tensor itself, updated in place

    params: list

    def images(self) -> torch.Tensor:
        """This step's images ``(G * n, 3, S, S)`` (batch g = rows g*n..g*n+n-1)."""
        raise NotImplementedError

    def learning_rates(self, step: torch.Tensor) -> list:
        raise NotImplementedError

    def after_step(self, loss: torch.Tensor) -> None:
        pass


def _plateau(lr: float, batches: int, cfg: "DistillConfig", like: torch.Tensor) -> DevicePlateau:
    """ReduceLROnPlateau per batch, starting at ``lr``."""
    return DevicePlateau(torch.full((batches,), lr, device=like.device, dtype=like.dtype),
                         patience=cfg.plateau_patience, min_lr=cfg.plateau_min_lr)


def _per_batch(lr: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A per-batch rate ``(G,)`` shaped to broadcast over ``param`` ``(G, ...)``."""
    return lr.view(-1, *([1] * (param.dim() - 1)))


class _Generator(_Strategy):
    """``generator`` (GBA): a generator per batch fed fixed Gaussian noise; its weights are
    trained at ``lr_generator``, decayed by ``generator_decay`` every 100 iterations."""

    default_iters, uses_generator, images_are_params = 4000, True, False

    def __init__(self, cfg: "DistillConfig", gens: list, n: int, image_size: int, device, dtype):
        self.cfg = cfg
        self.generator = StackedGenerator(gens, image_size).to(device, dtype)  # draws first, then the noise
        self.z = torch.stack([torch.randn(n, LATENT_DIM, generator=g) for g in gens]).to(device, dtype)
        self.lr_generator = torch.full((), cfg.lr_generator, device=device, dtype=dtype)
        self.generator_params = list(self.generator.parameters())
        self.params = list(self.generator_params)

    def images(self) -> torch.Tensor:
        return self.generator(self.z)

    def learning_rates(self, step: torch.Tensor) -> list:
        # ExponentialLR(generator_decay) stepped every 100 iterations
        decay = torch.pow(self.cfg.generator_decay, torch.div(step, 100, rounding_mode="floor"))
        self.lr_generator.copy_(self.cfg.lr_generator * decay)
        return [self.lr_generator] * len(self.generator_params)


class _GeneratorAndLatents(_Generator):
    """``genie`` (GENIE-D): the generator as in ``generator``, and its input latents trained too,
    at ``lr_latent`` with a plateau schedule per batch."""

    def __init__(self, cfg: "DistillConfig", gens: list, n: int, image_size: int, device, dtype):
        super().__init__(cfg, gens, n, image_size, device, dtype)
        self.z.requires_grad_(True)
        self.plateau = _plateau(cfg.lr_latent, len(gens), cfg, self.lr_generator)
        self.params = [self.z] + self.params

    def learning_rates(self, step: torch.Tensor) -> list:
        return [_per_batch(self.plateau.lr, self.z)] + super().learning_rates(step)

    def after_step(self, loss: torch.Tensor) -> None:
        self.plateau.step(loss)


class _Pixels(_Strategy):
    """``direct`` (ZeroQ-style DBA): the pixels themselves, from Gaussian noise, trained at
    ``lr_pixels`` with a plateau schedule per batch."""

    default_iters, uses_generator, images_are_params = 500, False, True

    def __init__(self, cfg: "DistillConfig", gens: list, n: int, image_size: int, device, dtype):
        self.shape = (len(gens) * n, 3, image_size, image_size)
        pixels = torch.stack([torch.randn(n, 3, image_size, image_size, generator=g) for g in gens])
        self.pixels = pixels.to(device, dtype).requires_grad_(True)
        self.plateau = _plateau(cfg.lr_pixels, len(gens), cfg, self.pixels)
        self.params = [self.pixels]

    def images(self) -> torch.Tensor:
        return self.pixels.view(self.shape)

    def learning_rates(self, step: torch.Tensor) -> list:
        return [_per_batch(self.plateau.lr, self.pixels)]

    def after_step(self, loss: torch.Tensor) -> None:
        self.plateau.step(loss)


STRATEGIES = {"genie": _GeneratorAndLatents, "generator": _Generator, "direct": _Pixels}
DISTILLERS = tuple(STRATEGIES)
DEFAULT_ITERS = {name: strategy.default_iters for name, strategy in STRATEGIES.items()}
