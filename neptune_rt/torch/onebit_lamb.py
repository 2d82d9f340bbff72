"""`OneBitLamb`: LAMB (You et al. 2019) on OneBitAdam's communication: a dense warm-up, then the variance frozen
and each rank's Adam direction m_i / (sqrt(v^) + eps) averaged by the onebit two-phase all-reduce with worker
and server error feedback (onebit_adam.py). What LAMB adds is the step: per parameter tensor,

    u = m^ / (sqrt(v^) + eps) + weight_decay * p        (decoupled weight decay)
    p -= lr * min(||p|| / ||u||, max_trust_ratio) * u     (ratio 1 where either norm is 0)

After the freeze, u is built from the averaged direction, which is byte-identical on every rank, so the trust
ratio is too: it is computed every step, not frozen as in the 1-bit LAMB paper (Li et al. 2021, which freezes it
because its compressed momentum's norm is distorted; here the scaled sign keeps each block's RMS, and error
feedback returns what one step drops). Exercised by tests/torch/test_onebit_adam.py (onebit_lamb_worker.py:
warm-up steps against a LAMB written out in the test, load_digits against dense LAMB, state_dict round trip).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from neptune_rt.torch.onebit_adam import OneBitAdam

__all__ = ["OneBitLamb"]


class OneBitLamb(OneBitAdam):
    """LAMB with OneBitAdam's warm-up, frozen variance and 1-bit averaged direction (worker and server error
    feedback). Same arguments as OneBitAdam, plus `max_trust_ratio` (10, as common LAMB implementations clip);
    `weight_decay` is LAMB's decoupled one. Collective: every rank builds it over the same parameters, in the
    same order."""

    _decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, max_trust_ratio: float = 10.0,
                 name: str = "onebit_lamb", **onebit: Any):
        if not max_trust_ratio > 0:
            raise ValueError(f"neptune_rt: OneBitLamb's max_trust_ratio must be > 0, got {max_trust_ratio}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, name=name, **onebit)
        self.max_trust_ratio = float(max_trust_ratio)

    def _lamb_step(self, p: torch.Tensor, group: dict[str, Any], direction: torch.Tensor, t: int) -> None:
        """p -= lr * trust_ratio * u, u = direction / (1 - beta1^t) + weight_decay * p."""
        u = direction / (1 - group["betas"][0] ** t)
        if group["weight_decay"]:
            u = u.add(p, alpha=group["weight_decay"])
        p_norm, u_norm = p.norm().item(), u.norm().item()
        ratio = min(p_norm / u_norm, self.max_trust_ratio) if p_norm > 0 and u_norm > 0 else 1.0
        p.add_(u, alpha=-group["lr"] * ratio)

    def _apply_direction(self, p: torch.Tensor, group: dict[str, Any], direction: torch.Tensor, t: int) -> None:
        self._lamb_step(p, group, direction, t)

    def _apply(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], t: int) -> None:
        """Warm-up: LAMB's step on the densely averaged gradient."""
        self._lamb_step(p, group, state["exp_avg"] / self._denom(group, state, t), t)
