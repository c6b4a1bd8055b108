"""ECoFLaP: global sparsity split across decoder blocks by zeroth-order importance,
then Wanda inside each block."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, Sequence

import torch

from ...errors import ConfigError
from ..base import METHODS
from .calibration import lm_loss
from .targets import block_index_of
from .wanda import Wanda


def zeroth_order_layer_scores(loss_fns: Sequence[Callable[[], float]], params: list[torch.Tensor], eps: float = 1e-3, n_directions: int = 1, seed: int = 0) -> list[float]:
    """Per weight matrix ``p``: ``Σ_b Σ_z |L_b(p + εz) - L_b(p - εz)| / 2ε`` over the
    calibration batches ``b`` (one loss function each) and ``n_directions`` draws
    ``z ~ N(0, I)`` of ``p``'s shape per batch, with only ``p`` perturbed (ECoFLaP's
    ``compute_importance_scores_mezo``, score ``MEZO-GradOnly``: summed, not averaged).

    Directions are drawn from a generator seeded with ``seed`` on ``p``'s device, in the
    order matrix, batch, direction.  The weights are restored exactly (copied back).
    """
    gens: dict[torch.device, torch.Generator] = {}
    scores = []
    with torch.no_grad():
        for p in params:
            gen = gens.get(p.device)
            if gen is None:
                gen = gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            saved = p.data.clone()
            total = 0.0
            for loss_fn in loss_fns:
                for _ in range(n_directions):
                    z = torch.randn(p.shape, generator=gen, device=p.device).to(p.dtype)
                    p.data.copy_(saved + eps * z)
                    plus = loss_fn()
                    p.data.copy_(saved - eps * z)
                    minus = loss_fn()
                    total += abs(plus - minus) / (2 * eps)
            p.data.copy_(saved)
            scores.append(total)
    return scores


def zeroth_order_scores(loss_fn: Callable[[], float], blocks: list[list[torch.Tensor]], eps: float = 1e-3, n_directions: int = 1, seed: int = 0) -> list[float]:
    """Per block ``mean_z |L(w + εz) - L(w - εz)| / 2ε`` with one joint ``z ~ N(0, I)``
    over all of the block's weights and ``L`` the loss over every calibration batch
    (``perturb="block"``, this project's earlier rule; cheaper than the reference's
    per-matrix scores by the number of matrices per block times the batches).
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


def allocate_sparsity_floor(scores: list[float], sizes: list[int], target: float, max_sparsity: float = 0.9) -> list[float]:
    """Per-group sparsity by ECoFLaP's rule (``compute_the_sparsity_per_group``), in
    whole parameters.

    The budget is ``T = int(N · (1 - target))`` kept weights of ``N``.  Every group first
    keeps its floor ``ceil(n_i · (1 - max_sparsity))`` (so none is pruned past the cap);
    the rest ``R = T - Σ keep`` is shared ``keep_i += ceil(score_i / Σ score · R)`` over
    the groups with room, each capped at ``n_i``, repeated until the budget is met
    (a full group leaves the sharing).  The ceilings may overshoot ``T`` by a few
    weights: they are taken back from the groups keeping the most, never below their
    floor (the reference's trimming step adds them instead, a sign slip; the difference
    is at most a few weights per group).  The share is ∝ the score itself, not
    parameter-weighted.  Non-positive scores everywhere: the rest is shared by size
    (uniform ``target``).  Returns ``1 - keep_i / n_i``.
    """
    n = [int(x) for x in sizes]
    if not n:
        return []
    total_keep = int(sum(n) * (1 - target))
    floor = [min(ni, math.ceil(round(ni * (1 - max_sparsity), 9))) for ni in n]
    keep = list(floor)
    s = [max(float(x), 0.0) for x in scores]
    if sum(s) <= 0:
        s = [float(ni) for ni in n]
    while sum(keep) < total_keep:
        rest = total_keep - sum(keep)
        room = [i for i in range(len(n)) if keep[i] < n[i]]
        live = [i for i in room if s[i] > 0]
        if not live:  # only zero-score groups have room left: fill them in order
            for i in room:
                add = min(rest, n[i] - keep[i])
                keep[i] += add
                rest -= add
            break
        tot = sum(s[i] for i in live)
        for i in live:
            keep[i] = min(n[i], keep[i] + math.ceil(s[i] / tot * rest))
    excess = sum(keep) - total_keep
    for i in sorted(range(len(n)), key=lambda j: -keep[j]):
        if excess <= 0:
            break
        take = min(excess, keep[i] - floor[i])
        keep[i] -= take
        excess -= take
    return [1.0 - k / ni if ni else 0.0 for k, ni in zip(keep, n)]


def allocate_sparsity(scores: list[float], sizes: list[int], target: float, max_sparsity: float = 0.9) -> list[float]:
    """Per-group sparsity with the kept fraction ∝ importance (``allocation=
    "proportional"``, this project's earlier rule): clipped to
    ``[1 - max_sparsity, 1]``, scaled (bisection) so the parameter-weighted sparsity
    equals ``target``.  Equal scores give the uniform ``target``."""
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

    Coarse: a zeroth-order importance of each decoder block (``granularity="block"``) or
    each weight matrix (``"layer"``), from forward passes only.  Default, as the
    reference (ylsung/ECoFLaP, ``MEZO-GradOnly_sum``, block granularity): every weight
    matrix is perturbed on its own, ``Σ_b |L_b(w+εz) - L_b(w-εz)| / 2ε`` summed over
    the calibration batches ``b`` (one fresh ``z`` per batch; the reference's loader
    gives one sample per batch, 128 of them), the matrices' scores summed per block
    (``score_aggregate="avg"`` divides by the block's weight count, as EffiVLM-Bench's
    ``MEZO-GradOnly_avg``).  The global budget of kept weights is then split as a floor
    ``(1 - max_layer_sparsity)`` per block plus a remainder ∝ score
    (:func:`allocate_sparsity_floor`).  Fine: Wanda inside each block at its sparsity.
    Targets outside the decoder get the global sparsity.

    The earlier rules stay reachable: ``perturb="block"`` (one joint direction over the
    block's matrices, loss over all batches: 2 forward passes of the calibration set
    per block and direction instead of 2 per matrix and batch) and
    ``allocation="proportional"`` (kept fraction ∝ score, clipped, exact by bisection).
    The reference's rule is the default because it is what the paper evaluates; its
    cost is ``2 × matrices × batches`` forward passes of one batch each.
    """

    name = "ecoflap"

    max_layer_sparsity: float = 0.9  # no block (or layer) is pruned beyond this
    epsilon: float = 1e-3  # perturbation size of the zeroth-order estimate
    n_directions: int = 1  # random directions per calibration batch (perturb=layer) or per block (perturb=block)
    seed: int = 0  # seed of the random directions
    perturb: Literal["layer", "block"] = "layer"  # layer: each weight matrix alone, per batch (reference); block: one joint direction per block
    granularity: Literal["block", "layer"] = "block"  # what gets one sparsity: a decoder block (reference default) or each weight matrix
    score_aggregate: Literal["sum", "avg"] = "sum"  # group score: sum of its matrices' scores, or that divided by its weight count
    allocation: Literal["floor", "proportional"] = "floor"  # floor + remainder ∝ score (reference), or kept fraction ∝ score

    def __post_init__(self) -> None:
        self._sparsity_of: dict[str, float] = {}  # target name -> allocated sparsity, once scored

    def validate(self) -> None:
        super().validate()
        if self.n_m is not None:
            raise ConfigError("ecoflap: nm is not supported (the global sparsity is split across blocks); use sparsity")
        self.check_range("max_layer_sparsity", 0, 1, high_open=True)
        if self.max_layer_sparsity < self.sparsity:
            raise ConfigError(f"ecoflap: max_layer_sparsity={self.max_layer_sparsity} is below sparsity={self.sparsity}")
        self.check_range("epsilon", 0, None, low_open=True)
        self.check_range("n_directions", 1)
        self.check_choice("perturb", ("layer", "block"))
        self.check_choice("granularity", ("block", "layer"))
        self.check_choice("score_aggregate", ("sum", "avg"))
        self.check_choice("allocation", ("floor", "proportional"))
        if self.perturb == "block" and self.granularity == "layer":
            raise ConfigError("ecoflap: granularity=layer needs per-matrix scores (perturb=layer)")

    def before_pass(self, ctx, targets, batches, report) -> None:
        block_of = block_index_of(ctx.model, ctx.adapter)
        names = [n for n in targets if n in block_of]  # decoder targets, in model order
        group_of = {n: (block_of[n] if self.granularity == "block" else n) for n in names}
        groups = list(dict.fromkeys(group_of[n] for n in names))
        sizes = {g: 0 for g in groups}
        for n in names:
            sizes[group_of[n]] += targets[n].weight.numel()
        scores = {g: 0.0 for g in groups}
        if self.perturb == "layer":
            loss_fns = [partial(lm_loss, ctx.model, ctx.adapter, [b]) for b in batches]
            per = zeroth_order_layer_scores(loss_fns, [targets[n].weight for n in names], self.epsilon, self.n_directions, self.seed)
            for n, sc in zip(names, per):
                scores[group_of[n]] += sc
            report.notes["ecoflap_layer_scores"] = dict(zip(names, per))
        else:
            params = [[targets[n].weight for n in names if group_of[n] == g] for g in groups]
            per = zeroth_order_scores(lambda: lm_loss(ctx.model, ctx.adapter, batches), params, self.epsilon, self.n_directions, self.seed)
            scores.update(zip(groups, per))
        if self.score_aggregate == "avg":
            scores = {g: scores[g] / sizes[g] for g in groups}
        allocate = allocate_sparsity_floor if self.allocation == "floor" else allocate_sparsity
        alloc = dict(zip(groups, allocate([scores[g] for g in groups], [sizes[g] for g in groups], self.sparsity, self.max_layer_sparsity)))
        self._sparsity_of = {n: alloc[group_of[n]] for n in names}
        if self.granularity == "block":
            n_blocks = len(ctx.adapter.decoder_layers)
            report.notes["ecoflap_block_scores"] = [scores.get(i, 0.0) for i in range(n_blocks)]
            report.notes["ecoflap_block_sparsity"] = [alloc.get(i, 0.0) for i in range(n_blocks)]
        else:
            report.notes["ecoflap_layer_sparsity"] = dict(self._sparsity_of)

    def layer_sparsity(self, name: str) -> float:
        return self._sparsity_of.get(name, self.sparsity)
