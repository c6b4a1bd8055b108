"""ECoFLaP: global sparsity split across decoder blocks by zeroth-order importance,
then Wanda inside each block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import ConfigError
from ..base import METHODS
from .calibration import lm_loss
from .targets import block_index_of
from .wanda import Wanda


def zeroth_order_scores(loss_fn: Callable[[], float], blocks: list[list[torch.Tensor]], eps: float = 1e-3, n_directions: int = 1, seed: int = 0) -> list[float]:
    """Per block ``mean_z |L(w + εz) - L(w - εz)| / 2ε`` with ``z ~ N(0, I)`` over the
    block's weights (a forward-only estimate of the directional derivative's size).
    The weights are restored exactly (copied, not re-subtracted)."""
    gen = torch.Generator().manual_seed(seed)
    scores = []
    with torch.no_grad():
        for params in blocks:
            if not params:
                scores.append(0.0)
                continue
            saved = [p.data.clone() for p in params]
            total = 0.0
            for _ in range(n_directions):
                zs = [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]
                for p, w, z in zip(params, saved, zs):
                    p.data.copy_(w + eps * z)
                plus = loss_fn()
                for p, w, z in zip(params, saved, zs):
                    p.data.copy_(w - eps * z)
                minus = loss_fn()
                total += abs(plus - minus) / (2 * eps)
            for p, w in zip(params, saved):
                p.data.copy_(w)
            scores.append(total / n_directions)
    return scores


def allocate_sparsity(scores: list[float], sizes: list[int], target: float, max_sparsity: float = 0.9) -> list[float]:
    """Per-block sparsity: kept fraction ∝ importance, clipped to ``[1 - max_sparsity, 1]``,
    scaled (bisection) so the parameter-weighted sparsity equals ``target``.  Equal
    scores give the uniform ``target``."""
    imp = torch.tensor(scores, dtype=torch.float64)
    n = torch.tensor(sizes, dtype=torch.float64)
    if imp.sum() <= 0 or target <= 0:
        return [float(target)] * len(scores)
    imp = imp / (imp * n).sum() * n.sum()  # parameter-weighted mean 1
    lo_d = 1.0 - max_sparsity
    want = (1.0 - target) * n.sum()

    def kept(c: float) -> torch.Tensor:
        return torch.clamp(c * imp, lo_d, 1.0)

    lo, hi = 0.0, 1.0
    while (kept(hi) * n).sum() < want and hi < 1e12:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if (kept(mid) * n).sum() < want:
            lo = mid
        else:
            hi = mid
    return [float(1 - d) for d in kept(hi)]


@METHODS.register
@dataclass
class ECoFLaP(Wanda):
    """ECoFLaP (Sung et al., "ECoFLaP: Efficient Coarse-to-Fine Layer-Wise Pruning for
    Vision-Language Models", ICLR 2024).

    Coarse: each decoder block's importance is the zeroth-order estimate
    ``|L(w+εz) - L(w-εz)| / 2ε`` of the calibration language-model loss (forward passes
    only); blocks keep a fraction of weights proportional to their importance, capped
    at ``max_layer_sparsity``, with the global ``sparsity`` over all targets.  Fine:
    Wanda inside each block at its allocated sparsity.  Targets outside the decoder get
    the global sparsity.
    """

    name = "ecoflap"

    max_layer_sparsity: float = 0.9  # no block is pruned beyond this
    epsilon: float = 1e-3  # perturbation size of the zeroth-order estimate
    n_directions: int = 1  # random directions averaged per block
    seed: int = 0  # seed of the random directions

    def __post_init__(self) -> None:
        self._block_of: dict[str, int] = {}  # target name -> decoder block, once scored
        self._block_sparsity: dict[int, float] = {}

    def validate(self) -> None:
        super().validate()
        if self.n_m is not None:
            raise ConfigError("ecoflap: nm is not supported (the global sparsity is split across blocks); use sparsity")
        self.check_range("max_layer_sparsity", 0, 1, high_open=True)
        if self.max_layer_sparsity < self.sparsity:
            raise ConfigError(f"ecoflap: max_layer_sparsity={self.max_layer_sparsity} is below sparsity={self.sparsity}")
        self.check_range("epsilon", 0, None, low_open=True)
        self.check_range("n_directions", 1)

    def before_pass(self, ctx, targets, batches, report) -> None:
        block_of = block_index_of(ctx.model, ctx.adapter)
        n_blocks = len(ctx.adapter.decoder_layers)
        params: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
        for name, lin in targets.items():
            if name in block_of:
                params[block_of[name]].append(lin.weight)
        scores = zeroth_order_scores(lambda: lm_loss(ctx.model, ctx.adapter, batches), params, self.epsilon, self.n_directions, self.seed)
        sizes = [sum(p.numel() for p in ps) for ps in params]
        active = [i for i in range(n_blocks) if sizes[i]]
        alloc = allocate_sparsity([scores[i] for i in active], [sizes[i] for i in active], self.sparsity, self.max_layer_sparsity)
        self._block_sparsity = {i: s for i, s in zip(active, alloc)}
        self._block_of = block_of
        report.notes["ecoflap_block_scores"] = scores
        report.notes["ecoflap_block_sparsity"] = [self._block_sparsity.get(i, 0.0) for i in range(n_blocks)]

    def layer_sparsity(self, name: str) -> float:
        block = self._block_of.get(name)
        if block is None:
            return self.sparsity
        return self._block_sparsity.get(block, self.sparsity)
