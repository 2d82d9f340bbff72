"""The thin Trainer: one readable loop that composes the engine, gradient compression (DistributedOptimizer,
wrapping the user's optimizer, never patching it), global-batch sharding (PlanSampler), the batch-size scheduler
(train/balance.py), evaluation, a learning-rate schedule with warm-up, gradient clipping, autocast, checkpoints
and the run directory. Launch under mpirun; exercised by tests/train/test_train_cli.py, test_train_resume.py and
test_train_balance.py.

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), (x_train, y_train), (x_test, y_test),
                      batch_size=256, epochs=2, compression="int8")
    result = trainer.fit()      # {"test_accuracy": ..., "run_dir": ..., ...}
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import neptune_rt.torch as nrt
from neptune_rt.schedule import PlanSampler
from neptune_rt.train import checkpoint as ckpt
from neptune_rt.train.balance import Balancer, micro_backward, plan_record, sgd_momentum
from neptune_rt.train.config import ConfigError, TrainConfig
from neptune_rt.train.datasets import training_pair
from neptune_rt.train.evaluate import score_test_set
from neptune_rt.train.lr_schedule import lr_factor
from neptune_rt.train.memory_probe import maybe_probe
from neptune_rt.train.monitor import MetricsLog, Progress, RunState, TensorBoard, Timeline, codec_label, write_atomic
from neptune_rt.train.run_files import RunFiles, restore, snapshot
from neptune_rt.train.telemetry import NOTE, EngineTelemetry

__all__ = ["Trainer", "lr_factor"]


class Trainer:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_data: Any,
                 test_data: Any = None, loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
                 config: TrainConfig | None = None, **overrides: Any):
        self.config = TrainConfig(**{**(config.to_dict() if config else {}), **overrides}).validate()
        self.model, self.loss_fn = model, loss_fn
        self.x_train, self.y_train = training_pair(train_data, "train_data")
        self.test = training_pair(test_data, "test_data") if test_data is not None else None
        self.user_optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    # --- set-up ---------------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        nrt.init()
        self.rank, self.size = nrt.rank(), nrt.size()
        self.balance = Balancer(c, self.rank, self.size, momentum=sgd_momentum(self.user_optimizer))
        self.device = torch.device("cuda", nrt.local_rank() % max(1, torch.cuda.device_count())) \
            if c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available()) else torch.device("cpu")
        if c.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
        if c.deterministic:
            torch.use_deterministic_algorithms(True)
        self.model.to(self.device)
        self.files = RunFiles.create(c, self.rank)
        compression = nrt.Compression.forced(c.compression) if c.force_codec and c.compression not in \
            ("none", "fp16", "bf16") else getattr(nrt.Compression, c.compression)
        self.opt = nrt.DistributedOptimizer(self.user_optimizer, named_parameters=self.model.named_parameters(),
                                            compression=compression)
        self.balance.check_codec(self.opt.local_momentum)
        self.sampler = PlanSampler(len(self.x_train), self.rank, self.size, seed=c.seed)
        self.steps_per_epoch = -(-len(self.x_train) // c.batch_size)
        self.total_steps = c.steps or max(1, math.ceil(c.epochs * self.steps_per_epoch))
        # Goodput mode may change the global batch: an --epochs run then ends after its samples, not its steps.
        self.total_samples = 0 if c.steps or c.balance != "goodput" else math.ceil(c.epochs * len(self.x_train))
        self.step, self.samples, self.wall_offset, self.last_acc = 0, 0, 0.0, None
        self.totals = {"step_s": 0.0, "comm_s": 0.0, "checkpoint_s": 0.0, "checkpoints": 0}
        resumed_at = None
        if c.resume:
            state = self.files.resume_state
            restore(self, state)
            resumed_at = self.step
        else:
            nrt.broadcast_parameters(self.model.state_dict(), root_rank=0)
            nrt.broadcast_optimizer_state(self.opt, root_rank=0)
            torch.manual_seed(c.seed * 1000 + self.rank + 1)  # dropout differs per rank, reproducibly
        self.files.start(self.size, self.step)
        self.start = time.monotonic()
        self.timeline = Timeline(self.files.dir / f"timeline.rank{self.rank}.json", self.rank,
                                 self.start - self.wall_offset, resumed_at)
        self.telemetry = EngineTelemetry()
        self.lead = self.rank == 0
        self.metrics = MetricsLog(self.files.dir / "metrics.jsonl", resumed_at) if self.lead else None
        self.tb = TensorBoard(self.files.dir / "tensorboard") if self.lead and c.tensorboard else None
        self.progress = Progress(c.progress, self.total_steps, self.step, self.lead)
        if self.lead and not self.telemetry.available:
            self.progress.message(NOTE)
        self.interval = {"loss": 0.0, "n": 0, "step_s": 0.0, "comm_s": 0.0, "samples": 0, "t": time.monotonic()}
        self._log_plan()
        if self.balance.fresh and self.balance.scheduler is not None and not c.max_micro:
            if maybe_probe(self) is not None:  # collective; the plan's new limits
                self.interval["t"] = time.monotonic()  # the first interval's samples/s counts training only
                self._log_plan()

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self._setup()
        c = self.config
        try:
            while not self._done():
                ckpt.die_if("kill-at-step", self.step)
                self._train_step()
                end_of_epoch = self.sampler.epoch_done
                if (c.eval_every and self.step % c.eval_every == 0) or (not c.eval_every and end_of_epoch):
                    self._evaluate()
                if c.checkpoint_every and self.step % c.checkpoint_every == 0 and not self._done():
                    self._checkpoint()
            if self.last_eval_step != self.step:
                self._evaluate()
            self._checkpoint()
            return self._finish()
        except BaseException as err:
            self.files.failed(err)
            raise
        finally:
            self.progress.close()

    last_eval_step = -1

    def _done(self) -> bool:
        if self.total_samples:
            return self.samples >= self.total_samples
        return self.step >= self.total_steps

    def _lr_factor(self) -> float:
        c = self.config
        if self.total_samples:  # goodput mode: the schedule follows samples, in steps of the starting batch
            return lr_factor(self.samples // c.batch_size, self.total_samples // c.batch_size, c.warmup_steps,
                             c.lr_schedule)
        return lr_factor(self.step, self.total_steps, c.warmup_steps, c.lr_schedule)

    def _train_step(self) -> None:
        c, tl, step, bal = self.config, self.timeline, self.step, self.balance
        t0 = time.monotonic()
        batch = self.sampler.next(bal.requested())
        sizes = list(batch.local_batches)
        idx = torch.from_numpy(batch.indices)
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * self._lr_factor() * bal.lr_scale  # the scheduler's scale, multiplicatively
        self.opt.set_weight(batch.weight(self.rank))  # b_i / B: the reduced gradient is the global-batch mean
        self.model.train()
        self.opt.zero_grad()
        x, y = self.x_train[idx].to(self.device), self.y_train[idx].to(self.device)
        t1 = time.monotonic()
        slept = bal.before_compute(len(idx))  # --emulate-slowdown: before the gradients leave this rank
        t1s = time.monotonic()
        micro = bal.micro_batches(len(idx))
        try:
            loss_value, sq_norm, t2 = self._compute(x, y, micro, t1s)
        except Exception as err:  # noqa: BLE001 -- only an out-of-memory that --balance answers goes on
            if not bal.caught_oom(err, micro, step):
                raise
            loss_value, sq_norm, t2 = 0.0, -1.0, None
        oom = bal.oom_micro
        if oom and self.device.type == "cuda":
            torch.cuda.empty_cache()  # outside the except block, whose traceback held the failed step's tensors
        if bal.scheduler is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the scheduler needs the compute time, not the launch time
        t3 = time.monotonic()
        bal.after_backward(len(idx), t3 - t1, slept, sq_norm)
        self.opt.synchronize()
        t4 = time.monotonic()
        new_plan = bal.after_synchronize(self.model.parameters())
        if c.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad)
        with self.opt.skip_synchronize():
            self.opt.step()
        t5 = time.monotonic()
        phases = [("data", t0, t1)] + ([("emulated slowdown", t1, t1s)] if slept else [])
        phases += [("forward", t1s, t2), ("backward", t2, t3)] if t2 is not None else \
            [("compute", t1s, t3)]  # compute: forward+backward of every micro-batch
        for name, a, b in phases + [("comm wait", t3, t4), ("optimizer", t4, t5)]:
            tl.add(name, a, b, step + 1)
        tl.add("step", t0, t5, step + 1, batch=sizes[self.rank], micro_batches=len(micro), slept=round(slept, 6),
               **({"out_of_memory_at": oom} if oom else {}))
        self.telemetry.bucket_events(tl, step + 1)
        bal.end_step(t5 - t0)
        self.step += 1
        self.samples += sum(sizes)
        if new_plan is not None:
            self._log_plan()
        iv = self.interval
        iv["loss"] += loss_value * len(idx)
        iv["n"] += 0 if oom else len(idx)  # an out-of-memory step has no loss on this rank
        iv["step_s"] += t5 - t0
        iv["comm_s"] += t4 - t3
        iv["samples"] += sum(sizes)
        self.totals["step_s"] += t5 - t0
        self.totals["comm_s"] += t4 - t3
        if self.step % c.log_every == 0 or self._done():
            self._log(sizes)
        elif self.lead:
            self.progress.update(self.step, self._fields(None), False)

    def _log_plan(self) -> None:
        plan = self.balance.unlogged()
        if plan is not None and self.lead:
            self.metrics.write({**plan_record(plan, self.step), "wall": round(self._wall(), 4), "time": time.time()})
            if plan.reason.startswith("out of memory"):
                self.progress.message(f"step {self.step}: {plan.reason}")

    def _compute(self, x: torch.Tensor, y: torch.Tensor, micro: list[int], t1s: float
                 ) -> tuple[float, float, float | None]:
        """Forward and backward of this rank's share: (local mean loss, local squared gradient norm or -1, the
        time backward began, None when the micro-batches interleave forward and backward)."""
        bal = self.balance
        if len(micro) == 1 and not bal.measure_norm:
            with self._forward():
                loss = self.loss_fn(self.model(x), y)
            t2 = time.monotonic()
            loss.backward()
            return float(loss.detach()), -1.0, t2
        if micro:  # accumulation over micro-batches and/or this rank's gradient norm (goodput)
            return (*micro_backward(self.model, self.loss_fn, self._forward, x, y, micro, bal.measure_norm), None)
        return 0.0, -1.0, t1s  # a rank with no samples in a short last batch contributes zeros at synchronize()

    @contextlib.contextmanager
    def _forward(self) -> Any:
        """A training forward's context: autocast (--amp) and --emulate-memory-cap's meter."""
        with self._autocast(), self.balance.memory_guard():
            yield

    def _autocast(self) -> Any:
        if self.config.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _wall(self) -> float:
        return self.wall_offset + time.monotonic() - self.start

    def _log(self, sizes: list[int]) -> None:
        iv = self.interval
        sums = nrt.allreduce(torch.tensor([iv["loss"], float(iv["n"])], dtype=torch.float64),
                             name="train.metrics", op=nrt.Sum)
        now = time.monotonic()
        self.balance.check_agreement()
        record = {"kind": "train", "step": self.step, "epoch": self.sampler.epoch + self.sampler.position /
                  self.sampler.dataset_size, "samples": self.samples, "wall": round(self._wall(), 4),
                  "time": time.time(), "loss": float(sums[0] / max(sums[1].item(), 1)),
                  "lr": self.opt.param_groups[0]["lr"],
                  "samples_per_s": iv["samples"] / max(now - iv["t"], 1e-9),
                  "comm_share": iv["comm_s"] / max(iv["step_s"], 1e-9), "batch_sizes": sizes,
                  **self.telemetry.interval()}
        if self.balance.plan is not None:  # the plan for the next step, checked equal on every rank above
            record.update(plan_version=self.balance.plan.version, plan_digest=self.balance.plan.digest())
        self.interval = {"loss": 0.0, "n": 0, "step_s": 0.0, "comm_s": 0.0, "samples": 0, "t": now}
        if self.lead:
            self.metrics.write(record)
            if self.tb:
                self.tb.scalars(self.step, {f"train/{k}": v for k, v in record.items()
                                            if k not in ("step", "time", "kind")}, record["time"])
            self.progress.update(self.step, self._fields(record), True)
            self.files.state.update(state="running", step=self.step, total_steps=self.total_steps,
                                    wall=record["wall"], samples_per_s=record["samples_per_s"])
        self.last_record = record

    last_record: dict[str, Any] | None = None

    def _fields(self, record: dict[str, Any] | None) -> dict[str, str]:
        r = record or self.last_record or {}
        out = {"epoch": f"{self.samples / self.sampler.dataset_size:.2f}",
               "loss": f"{r['loss']:.4f}" if "loss" in r else "-",
               "samples/s": f"{r.get('samples_per_s', 0):.0f}",
               "acc": f"{self.last_acc * 100:.2f}%" if self.last_acc is not None else "-",
               "comm": f"{r.get('comm_share', 0) * 100:.0f}%"}
        if "compression_ratio" in r:  # what travelled: the cost model may send a compressed bucket dense
            used = codec_label(r["codecs_used"]) if r.get("codecs_used") else "?"
            out["codec"] = f"{used} {r['compression_ratio']:.1f}x"
        return {**out, **self.balance.progress_fields()}

    def _evaluate(self) -> None:
        if self.test is None:
            return
        t0 = time.monotonic()
        self.last_acc, test_loss = score_test_set(self.model, *self.test, self.loss_fn, self._autocast, self.device)
        self.last_eval_step = self.step
        self.timeline.add("eval", t0, time.monotonic(), self.step)
        if self.lead:
            record = {"kind": "eval", "step": self.step, "samples": self.samples, "wall": round(self._wall(), 4),
                      "time": time.time(), "test_accuracy": self.last_acc, "test_loss": test_loss}
            self.metrics.write(record)
            if self.tb:
                self.tb.scalars(self.step, {"eval/accuracy": self.last_acc, "eval/loss": record["test_loss"]})
            self.progress.update(self.step, self._fields(None), False)

    def _checkpoint(self) -> None:
        t0 = time.monotonic()
        state = snapshot(self)  # collective: gathers every rank's RNG state and residuals
        if self.lead:
            ckpt.save(self.files.dir / "checkpoints", self.step, state, self.config.keep_checkpoints)
            self.timeline.write()
        elif self._done() or self.config.checkpoint_every:
            self.timeline.write()
        took = time.monotonic() - t0
        self.totals["checkpoint_s"] += took
        self.totals["checkpoints"] += 1
        self.timeline.add("checkpoint", t0, t0 + took, self.step)

    def _finish(self) -> dict[str, Any]:
        nrt.barrier(name="train.finish")  # every rank's files are written before rank 0 declares the run done
        self.timeline.write()
        self.opt.remove_hooks()
        result = {"run_dir": str(self.files.dir), "ranks": nrt.size(), "steps": self.step, "samples": self.samples,
                  "test_accuracy": self.last_acc, "wall_s": round(self._wall(), 3),
                  "comm_share": self.totals["comm_s"] / max(self.totals["step_s"], 1e-9),
                  "checkpoint_s": round(self.totals["checkpoint_s"], 4), "checkpoints": self.totals["checkpoints"],
                  **self.telemetry.run_totals()}
        if self.lead:
            self.metrics.close()
            if self.tb:
                self.tb.close()
            self.files.state.update(state="finished", step=self.step, total_steps=self.total_steps,
                                    wall=result["wall_s"], result=result)
        return result
