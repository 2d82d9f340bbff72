"""The Trainer's side of the batch-size scheduler (`--balance`, docs/schedule.md): each step's requested per-rank
sizes and micro-batches, the emulated slowdown (`--emulate-slowdown`, a demo/test aid), the statistics rows
(through `StatsPipe`: each step's row travels in the next step's gradient cycle) fed to `BatchScheduler.observe`,
the plan records of metrics.jsonl, the plan-digest check across ranks, the scheduler's checkpoint slot, and an
out-of-memory in a rank's compute (real, or past `--emulate-memory-cap`): the step goes on without that rank's
gradient where it had not left yet, the rank's own micro-batches shrink at once, and the plan's limit follows when
the row reaches the scheduler. With --balance off only the equal split, the emulated slowdown and the emulated
memory cap remain (an out-of-memory then ends the run). Exercised by tests/train/test_train_balance.py
under mpirun.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ContextManager, Iterable

import torch

import neptune_rt.torch as nrt
from neptune_rt.schedule import (BatchScheduler, CpuMemoryMeter, CudaMemoryMeter, EmulatedSlowdown, MemoryProbe, Plan,
                                 StatsPipe, equal_split, local_backward, micro_split, micro_weights, probe_max_micro,
                                 stats_row)
from neptune_rt.train.config import ConfigError, TrainConfig

__all__ = ["Balancer", "plan_record", "micro_backward", "sgd_momentum"]

# Squared error over squared norm of one encoding, on a heavy-tailed gradient (2^16 lognormal-scaled normals, the
# default block; measured with neptune_rt.codecs.encode/decode): int8 0.04%, int4 7.4%, onebit 104%.
LOSSY_FOR_NOISE_SCALE = {"int4": "7%", "onebit": "100%"}


def sgd_momentum(optimizer: torch.optim.Optimizer) -> float:
    """The heavy-ball momentum goodput's efficiency model should assume for `optimizer`: torch.optim.SGD's
    `momentum` (the smallest over its parameter groups, Nesterov's too), 0 for any other optimizer (AdamW's
    preconditioning is not modelled, and plain SGD's model is the more cautious one)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return 0.0
    return min(float(g.get("momentum", 0.0)) for g in optimizer.param_groups)


def plan_record(plan: Plan, step: int) -> dict[str, Any]:
    """metrics.jsonl's record of a new plan, adopted after `step` steps (it applies from step + 1)."""
    return {"kind": "plan", "step": step, "version": plan.version, "global_batch": plan.global_batch,
            "local_batches": list(plan.local_batches), "accum_steps": list(plan.accum_steps),
            "max_micro": list(plan.max_micro), "lr_scale": plan.lr_scale, "noise_scale": plan.noise_scale,
            "predicted_step_s": plan.predicted_step_s, "predicted_goodput": plan.predicted_goodput,
            "reason": plan.reason, "digest": plan.digest()}


def micro_backward(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor],
                   autocast: Callable[[], ContextManager[Any]], x: torch.Tensor, y: torch.Tensor, micro: list[int],
                   measure_norm: bool) -> tuple[float, float]:
    """Forward+backward of a rank's micro-batches of sizes `micro`, accumulated through local_backward (so the
    communication hooks fire once, with the whole local mean gradient); the local mean loss and the squared
    norm of the local gradient (-1 unless measure_norm)."""
    losses: list[torch.Tensor] = []

    def part(xs: torch.Tensor, ys: torch.Tensor, w: float) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with autocast():
                loss = w * loss_fn(model(xs), ys)
            losses.append(loss.detach())
            return loss
        return run
    fns = [part(xs, ys, w) for xs, ys, w in zip(x.split(micro), y.split(micro), micro_weights(micro))]
    sq = local_backward(model.parameters(), fns, measure_norm=measure_norm)
    return float(sum(losses)), sq


class Balancer:
    def __init__(self, config: TrainConfig, rank: int, size: int, momentum: float = 0.0):
        """momentum: the optimizer's heavy-ball momentum (`sgd_momentum`), for goodput's efficiency model."""
        self.config, self.rank, self.size, self.momentum = config, rank, size, momentum
        self.mode = config.balance
        factors = config.check_world(size)
        self.slowdown = EmulatedSlowdown(factors[rank], config.emulate_per_sample_ms / 1e3 or None) \
            if factors else None
        # Reproducible scheduler inputs: the emulated compute instead of the clock (see --emulate-per-sample-ms).
        self.emulated_inputs = bool(config.deterministic and self.slowdown and self.slowdown.fixed)
        self.scheduler = self._new_scheduler() if self.mode != "off" else None
        self.fresh = True  # the scheduler starts afresh (no checkpoint's plan): memory limits to probe
        self.logged_version = -1  # last plan version written to metrics.jsonl
        self.pipe = StatsPipe() if self.scheduler else None
        self._row: list[float] | None = None  # this step's row, completed with the step's wall time in end_step
        caps = config.memory_caps(size)
        self.memory = CpuMemoryMeter(caps[rank]) if caps and caps[rank] > 0 else None  # --emulate-memory-cap
        self.micro_cap = 0  # this rank's own micro-batch limit after an out-of-memory, until the plan's is as low
        self.oom_micro = 0  # the micro-batch that ran out of memory this step (0: none), for this step's row

    @property
    def largest_share(self) -> int:
        """The most samples one rank's share can hold: the global batch, or goodput's upper bound."""
        return self.config.bounds(self.size)[1] if self.mode == "goodput" else self.config.batch_size

    def _new_scheduler(self) -> BatchScheduler:
        c = self.config
        goodput = self.mode == "goodput"
        largest = self.largest_share  # a share may run as accumulated micro-batches
        # Accumulation is unbounded in effect: a probed or backed-off limit must never shrink the global batch.
        # Goodput's efficiency model follows the optimizer's heavy-ball momentum (critical batch phi / (1 - m));
        # hetero does not use it.
        return BatchScheduler(self.size, c.batch_size, max_micro=c.max_micro or largest,
                              max_accum=largest, adaptive_batch=goodput,
                              batch_bounds=c.bounds(self.size) if goodput else None, lr_rule=c.lr_rule,
                              momentum=self.momentum if goodput else 0.0)

    def check_codec(self, local_momentum: bool) -> None:
        """Goodput's noise scale against the gradient codec (DistributedOptimizer's `local_momentum` says whether
        the reduced .grad is the momentum update): ConfigError on every rank under local momentum; a warning on
        rank 0 for a coarse codec, whose error the reduced gradient's norm carries."""
        c = self.config
        if self.mode != "goodput":
            return
        if local_momentum:
            raise ConfigError(f"--balance goodput cannot measure the gradient noise scale under local momentum "
                              f"(--compression {c.compression} with SGD momentum {c.momentum}): the reduced .grad is "
                              f"then the averaged momentum update, not the gradient. Use --compression int8, fp16, "
                              f"bf16 or none, or SGD without momentum, or --balance hetero")
        if c.compression in LOSSY_FOR_NOISE_SCALE and self.rank == 0:
            warnings.warn(f"--balance goodput with --compression {c.compression}: the noise scale compares the "
                          f"ranks' own gradient norms with the reduced gradient's, which carries the codec's error "
                          f"(about {LOSSY_FOR_NOISE_SCALE[c.compression]} of a rank's squared norm); the noise "
                          f"scale then reads low and goodput keeps smaller batches. Use int8, fp16 or bf16 with "
                          f"goodput, or --balance hetero")

    # -- memory ----------------------------------------------------------------------------------------
    def wants_probe(self, device_type: str) -> bool:
        """This rank has memory to measure (a CUDA device, or --emulate-memory-cap) and nothing set the limits
        (--balance without --max-micro). Agreed across ranks before probing (the probe is collective)."""
        return self.scheduler is not None and not self.config.max_micro and \
            bool(self.config.emulate_memory_cap or device_type == "cuda")

    def probe_memory(self, run: Callable[[int], Any], device: torch.device, samples: int,
                     cuda_capacity: float | None = None) -> list[int]:
        """Collective: every rank's largest micro-batch (`probe_max_micro`, safety 0.9 x capacity) becomes the
        plan's max_micro. `run(b)` is one forward+backward of b samples without .grad (torch.autograd.grad);
        `cuda_capacity`: the bytes a CUDA rank may aim at (neptune_rt.train.memory_probe.cuda_capacity)."""
        if self.config.emulate_memory_cap or device.type != "cuda" or cuda_capacity is None:
            # A rank without a cap (or a CPU rank of a mixed job) measures against a capacity it never reaches.
            meter: Any = self.memory or CpuMemoryMeter(float(2**62))
        else:
            meter = CudaMemoryMeter(device, cuda_capacity)
        limit = max(1, min(self.largest_share, samples))
        limits = probe_max_micro(run, meter, MemoryProbe(self.size, start=min(16, limit), limit=limit),
                                 name="train.memory_probe")
        self.scheduler.set_max_micro(limits, f"memory probe: max micro-batch {'/'.join(map(str, limits))}")
        return limits

    # -- per step ---------------------------------------------------------------------------------------
    @property
    def plan(self) -> Plan | None:
        return self.scheduler.plan if self.scheduler else None

    def requested(self) -> list[int]:
        """Per-rank sizes to ask the sampler for this step."""
        plan = self.plan
        return list(plan.local_batches) if plan else equal_split(self.config.batch_size, self.size)

    def micro_batches(self, local: int) -> list[int]:
        """This rank's micro-batch sizes for a local batch of `local` samples (accumulation when > 1)."""
        plan = self.plan
        if not plan:
            return [local] if local else []
        limit = plan.max_micro[self.rank]
        if self.micro_cap:  # after an out-of-memory, until the plan's limit has come down (a step later)
            if limit <= self.micro_cap:
                self.micro_cap = 0
            else:
                limit = self.micro_cap
        return micro_split(local, limit)

    def memory_guard(self) -> ContextManager[Any]:
        """Around each micro-batch's forward: --emulate-memory-cap's meter (nothing when off)."""
        return self.memory.measure() if self.memory else contextlib.nullcontext()

    def caught_oom(self, err: BaseException, micro: list[int], step: int) -> bool:
        """True when `err` is an out-of-memory that --balance answers: this rank takes part in the step anyway
        (synchronize contributes what gradient it has, zeros elsewhere), runs smaller micro-batches from the next
        step on, and reports the failed size in its row so the plan lowers its limit for every rank."""
        if self.scheduler is None or not micro or not isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
            return False
        failed = max(micro)
        self.oom_micro = failed
        self.micro_cap = max(1, failed * 3 // 4)
        warnings.warn(f"neptune_rt: rank {self.rank}: out of memory at a micro-batch of {failed} samples in step "
                      f"{step + 1} ({err}); the step goes on without this rank's gradient where it had not been "
                      f"sent, and its micro-batches are now at most {self.micro_cap} samples"
                      + ("" if failed > 1 else ": none is smaller, so every rank stops with the next statistics"))
        return True

    @property
    def lr_scale(self) -> float:
        return self.scheduler.lr_scale if self.scheduler else 1.0  # AdaScale's gain moves with the noise scale

    @property
    def measure_norm(self) -> bool:
        return self.mode == "goodput"

    def before_compute(self, local: int) -> float:
        """Before forward/backward: sends the previous step's statistics row (it rides in the gradients' first
        engine cycle, so nobody waits for it) and sleeps the emulated slowdown."""
        if self.pipe:
            self.pipe.send()
        return self.slowdown.before_compute(local) if self.slowdown else 0.0

    def after_backward(self, local: int, compute_s: float, slept_s: float, local_sq_norm: float) -> None:
        """Right after backward: this step's statistics (sent with the next step's gradients)."""
        if self.slowdown and not self.oom_micro:  # an out-of-memory step's compute stopped part way
            self.slowdown.after_compute(local, compute_s - slept_s)
        if self.scheduler is not None:
            if self.emulated_inputs:
                compute_s = self.slowdown.emulated_compute(local)
            self._row = stats_row(local, compute_s, local_sq_norm, -1.0, 0.0, oom=self.oom_micro)
            self.oom_micro = 0

    def after_synchronize(self, params: Iterable[torch.Tensor]) -> Plan | None:
        """After the gradients are reduced (before clipping): the reduced gradient's norm for this step's row,
        and every rank's previous-step rows to the scheduler; returns the new plan when it changed."""
        if self.scheduler is None:
            return None
        if self.measure_norm and self._row is not None:  # the reduced gradient is bit-identical on every rank
            self._row[3] = float(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
        rows = self.pipe.receive()
        if rows is None:
            return None
        before = self.scheduler.plan
        plan = self.scheduler.observe(rows)
        return plan if plan is not before else None

    def end_step(self, step_s: float) -> None:
        if self.pipe and self._row is not None:
            self._row[4] = self.slowdown.emulated_compute(int(self._row[0])) if self.emulated_inputs else step_s
            self.pipe.record(self._row)
            self._row = None

    def progress_fields(self) -> dict[str, str]:
        """The progress bar's / lines' view of the plan in force: per-rank sizes, accumulation, global batch."""
        plan = self.plan
        if plan is None:
            return {}
        out = {"batch": "/".join(map(str, plan.local_batches))}
        if max(plan.accum_steps) > 1:
            out["accum"] = "/".join(map(str, plan.accum_steps))
        if plan.global_batch != self.config.batch_size:
            out["B"] = str(plan.global_batch)
        return out

    def unlogged(self) -> Plan | None:
        """The current plan if metrics.jsonl does not have it yet."""
        plan = self.plan
        if plan is None or plan.version == self.logged_version:
            return None
        self.logged_version = plan.version
        return plan

    def check_agreement(self) -> None:
        """Collective: every rank holds the same plan (the scheduler is deterministic given identical inputs;
        a difference would mean diverged inputs, and the ranks would ask for inconsistent slices)."""
        if self.scheduler is None:
            return
        digests = nrt.allgather_object(self.plan.digest(), name="train.plan.digest")
        if len(set(digests)) != 1:
            raise RuntimeError(f"neptune_rt: rank {self.rank}: the batch-size plans differ across ranks "
                               f"(digests by rank: {digests}); the scheduler's inputs diverged")

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        return {"mode": self.mode, "world_size": self.size, "scheduler": self.scheduler.state_dict()}

    def per_rank_state(self) -> dict[str, Any] | None:
        """This rank's own state: its slowdown measurement and the statistics row not yet sent."""
        if not (self.slowdown or self.pipe):
            return None
        return {"emulate": self.slowdown.state_dict() if self.slowdown else None,
                "pipe": self.pipe.state_dict() if self.pipe else None, "micro_cap": self.micro_cap}

    def load_state_dict(self, state: dict[str, Any] | None, per_rank: dict[str, Any] | None) -> None:
        """Restores the scheduler (and this rank's slowdown measurement). A checkpoint of another world size,
        mode or global batch restarts the scheduler from an equal split, with a warning on rank 0."""
        pipe = None
        if per_rank is not None and "pipe" in per_rank:
            self.micro_cap = int(per_rank.get("micro_cap", 0))  # an out-of-memory the plan has not caught up with
            per_rank, pipe = per_rank["emulate"], per_rank["pipe"]
        if self.slowdown and per_rank:
            self.slowdown.load_state_dict(per_rank)
        if self.scheduler is None:
            return
        why = None
        if state is None:
            why = "the checkpoint has no scheduler state (it ran with --balance off)"
        elif state["world_size"] != self.size:
            why = f"the checkpoint's {state['world_size']} ranks differ from this run's {self.size}"
        elif state["mode"] != self.mode:
            why = f"the checkpoint ran --balance {state['mode']}"
        else:
            try:
                self.scheduler.load_state_dict(state["scheduler"])
            except (ValueError, KeyError) as err:
                why = str(err)
        if why:
            self.scheduler = self._new_scheduler()
            if self.rank == 0:
                warnings.warn(f"--balance {self.mode}: the batch-size scheduler restarts from an equal split: {why}")
        else:
            self.fresh = False
            self.logged_version = self.scheduler.plan.version  # already in metrics.jsonl
            if pipe is not None:  # the row the uninterrupted run would send next (every rank has one)
                self.pipe.load_state_dict(pipe)
            # A lower --max-micro given on resume (the way out of an out-of-memory crash) applies over the
            # checkpoint's limits: a new plan, logged like any other.
            kept = self.scheduler.plan.max_micro
            limits = [min(m, self.config.max_micro) for m in kept] if self.config.max_micro else list(kept)
            if limits != list(kept):
                self.scheduler.set_max_micro(limits)
