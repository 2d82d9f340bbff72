"""One process standing in for n ranks of the engine's onebit compressed all-reduce, for the onebit studies
(benchmarks/onebit_blocks.py: scale block and rule on digits; benchmarks/onebit_convergence.py: the race
workload). `scaled_sign` is decode(encode(x)) of the codec (checked against the C++ codec by onebit_blocks.py),
and `OnebitAllreduce` follows csrc/collectives/compressed_allreduce.cc: per-rank error feedback, and for the
two-phase algorithm the reducing rank's second error feedback (the whole all-reduce checked against the engine's
by `onebit_convergence.py --check-engine` under mpirun).
"""
from __future__ import annotations

import torch
import torch.nn as nn

RULES = ("l2", "mean", "stoch")


def scaled_sign(x: torch.Tensor, block: int, rule: str = "l2", gen: torch.Generator | None = None) -> torch.Tensor:
    """decode(encode(x)) per block of `block` values (the last one partial, with its own length): sign(x)
    (sign(0) = +1) times the block's scale. rule `l2`: the block RMS (the engine's codec; DeepSpeed's 1-bit
    Adam); `mean`: mean |x| (the least-squares scale of a sign code); `stoch`: +-max|x| with
    P(+) = (1 + x/max|x|)/2 (unbiased, higher variance)."""
    n = x.numel()
    pad = (-n) % block
    xb = torch.cat([x, x.new_zeros(pad)]).view(-1, block) if pad else x.view(-1, block)
    lengths = torch.full((xb.shape[0],), float(block))
    if pad:
        lengths[-1] = block - pad
    if rule == "stoch":
        scale = xb.abs().amax(1).clamp_min(1e-30)
        u = torch.rand(xb.shape, generator=gen)
        return (torch.where(u < (1 + xb / scale[:, None]) / 2, 1.0, -1.0) * scale[:, None]).reshape(-1)[:n]
    if rule == "l2":
        scale = (xb.square().sum(1) / lengths).sqrt()
    elif rule == "mean":
        scale = xb.abs().sum(1) / lengths
    else:
        raise ValueError(f"unknown scale rule {rule!r} (use one of {', '.join(RULES)})")
    return (torch.where(xb < 0, -1.0, 1.0) * scale[:, None]).reshape(-1)[:n]


def split_evenly(count: int, n: int) -> list[tuple[int, int]]:
    """(offset, length) of each rank's chunk, as the engine splits a buffer (the first count % n one longer)."""
    base, extra = divmod(count, n)
    out, pos = [], 0
    for i in range(n):
        length = base + (i < extra)
        out.append((pos, length))
        pos += length
    return out


class OnebitAllreduce:
    """The engine's compressed sum all-reduce of n ranks' fp32 vectors: codec blocks start at each chunk's offset
    (one segment per chunk at these sizes), a residual per rank, and for `two_phase` one per reducing rank."""

    def __init__(self, count: int, n: int, block: int, algo: str, rule: str = "l2", seed: int = 0):
        if algo not in ("ring", "two_phase"):
            raise ValueError(f"unknown algorithm {algo!r} (ring or two_phase)")
        self.n, self.block, self.algo, self.rule = n, block, algo, rule
        self.chunks = split_evenly(count, n)
        self.residual = [torch.zeros(count) for _ in range(n)]
        self.server = [torch.zeros(c) for _, c in self.chunks]  # two-phase's second error feedback
        self.gen = torch.Generator().manual_seed(1000 + seed)

    def _q(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        residual += x
        q = scaled_sign(residual, self.block, self.rule, self.gen)
        residual -= q
        return q

    def __call__(self, xs: list[torch.Tensor]) -> torch.Tensor:
        n, out = self.n, torch.empty_like(xs[0])
        for c, (off, length) in enumerate(self.chunks):
            sl = slice(off, off + length)
            if self.algo == "ring":  # chunk c starts at rank c; each next rank adds its own and requantizes
                acc = self._q(self.residual[c][sl], xs[c][sl])
                for k in range(1, n):
                    r = (c + k) % n
                    acc = self._q(self.residual[r][sl], xs[r][sl] + acc)
            else:  # two-phase: every rank encodes chunk c once, rank c sums (own, c-1, c-2, ...) and re-encodes
                parts = [self._q(self.residual[r][sl], xs[r][sl]) for r in range(n)]
                total = parts[c].clone()
                for d in range(1, n):
                    total += parts[(c - d) % n]
                acc = self._q(self.server[c], total)
            out[sl] = acc
        return out


def rank_gradients(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   batch_indices: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Each of n ranks' flattened cross-entropy gradient (in `params` order) on its equal slice of the batch."""
    local = len(batch_indices) // n
    grads = []
    for r in range(n):
        idx = batch_indices[r * local:(r + 1) * local]
        model.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return grads


def check_against_codec(blocks: tuple[int, ...] = (32, 64, 128, 256)) -> None:
    """The `l2` rule is the engine's codec: decode(encode(x)) must agree with it (ulp-level: the C++ codec sums
    the squares in another order)."""
    import numpy as np
    from neptune_rt import _C
    x = torch.randn(1000)
    for block in blocks:
        engine = np.empty(1000, np.float32)
        _C.decode(_C.encode("onebit", x.numpy(), block=block), engine)
        ours = scaled_sign(x, block, "l2").numpy()
        assert np.allclose(engine, ours, rtol=1e-6, atol=0), f"block {block}: {np.abs(engine - ours).max()}"
