"""The run directory and what a checkpoint holds. `RunFiles.create` agrees on the directory across ranks
(rank 0 decides, everyone gets the same answer or the same error) and for --resume loads the last checkpoint on every
rank; a resume rewrites config.toml (and run.json) only once its checkpoint has been restored, so a refused resume
leaves them as they were. `snapshot` / `restore` turn a trainer into a checkpoint and back: model, optimizer, data
position (the sampler), the batch-size scheduler, every rank's RNG state and error-feedback residuals.
Exercised by tests/train/test_train_resume.py.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

import neptune_rt.torch as nrt
from neptune_rt.train import checkpoint as ckpt
from neptune_rt.train.config import TrainConfig, dump_toml
from neptune_rt.train.monitor import RunState, write_atomic
from neptune_rt.train.telemetry import export_residuals, import_residuals

__all__ = ["RunFiles", "agree", "snapshot", "restore"]


def agree(decide: Callable[[], Any], name: str) -> Any:
    """Rank 0 runs `decide`; every rank returns its value or raises the same error (no rank is left waiting)."""
    if nrt.rank() == 0:
        try:
            outcome = ("ok", decide())
        except (ValueError, OSError, RuntimeError) as err:
            outcome = ("error", type(err).__name__, str(err))
    else:
        outcome = None
    outcome = nrt.broadcast_object(outcome, 0, name=name)
    if outcome[0] == "error":
        kind = {"CheckpointError": ckpt.CheckpointError, "OSError": OSError}.get(outcome[1], ValueError)
        raise kind(outcome[2])
    return outcome[1]


class RunFiles:
    def __init__(self, directory: Path, rank: int, resume_state: dict[str, Any] | None):
        self.dir, self.rank, self.resume_state = directory, rank, resume_state
        self.resumed_from: str | None = None  # the checkpoint file a resume starts from
        self.resolved: TrainConfig | None = None
        self.state = RunState(directory / "run.json")

    @classmethod
    def create(cls, config: TrainConfig, rank: int) -> "RunFiles":
        def choose() -> str:
            if config.resume:
                path = Path(config.resume)
                ckpt.remove_partial(path / "checkpoints")
                last = ckpt.resumable(path)
                ckpt.load(last)  # readable here before anyone relies on it
                return str(last)
            path = Path(config.run_dir or f"runs/{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}")
            if (path / "run.json").exists():
                raise ValueError(f"run directory {path} already holds a run; resume it with --resume {path} or "
                                 f"choose another --run-dir")
            path.mkdir(parents=True, exist_ok=True)
            return str(path)

        chosen = agree(choose, "train.run_dir")
        state = ckpt.load(Path(chosen)) if config.resume else None
        directory = Path(config.resume) if config.resume else Path(chosen)
        files = cls(directory, rank, state)
        files.resumed_from = chosen if config.resume else None
        # The resolved configuration (a resume may have changed e.g. --steps). A resume writes it in start(), once the
        # checkpoint has been restored: one that fails its checks (another model, optimizer or data) leaves the run's
        # own config.toml, which its message names as the fix, as it was.
        files.resolved = dataclasses.replace(config, run_dir=str(directory), resume="")
        if not config.resume:
            files.write_config()
        return files

    def write_config(self) -> None:
        if self.rank == 0:
            write_atomic(self.dir / "config.toml", dump_toml(self.resolved, "resolved configuration of this run; "
                                                             "`neptune-rt train --config` reads it"))

    def start(self, world_size: int, step: int) -> None:
        """run.json says "running", and a resumed run's config.toml holds its resolved configuration (called once
        the checkpoint, if any, has been restored)."""
        if self.resumed_from:
            self.write_config()
        if self.rank == 0:
            if self.resumed_from:
                self.state.data = json.loads((self.dir / "run.json").read_text())
            self.state.update(state="running", started=datetime.datetime.now(datetime.UTC).isoformat(),
                              world_size=world_size, step=step, resumed_from=self.resumed_from, error=None)

    def failed(self, err: BaseException) -> None:
        if self.rank == 0:
            try:
                self.state.update(state="failed", error=f"{type(err).__name__}: {err}",
                                  traceback=traceback.format_exc(limit=5))
            except OSError:
                pass


def snapshot(trainer: Any) -> dict[str, Any]:
    """Collective. The checkpoint content (complete on rank 0; other ranks get {})."""
    mine = {"torch_rng": torch.get_rng_state(), "residuals": export_residuals(),
            "cuda_rng": torch.cuda.get_rng_state() if trainer.device.type == "cuda" else None,
            "slowdown": trainer.balance.per_rank_state()}
    per_rank = nrt.allgather_object(mine, name="train.checkpoint.per_rank")
    if trainer.rank != 0:
        return {}
    return {"config": trainer.config.to_dict(), "world_size": trainer.size, "sampler": trainer.sampler.state_dict(),
            "samples": trainer.samples, "wall": trainer._wall(),
            "model": trainer.model.state_dict(), "optimizer": trainer.opt.state_dict(), "per_rank": per_rank,
            "scheduler": trainer.balance.state_dict(), "totals": dict(trainer.totals), "last_acc": trainer.last_acc}


def _check_model(state: dict[str, Any], model: torch.nn.Module, source: str) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state["model"].items()}
    if want != have:
        diff = sorted(f"{k}: checkpoint {have.get(k)} vs model {want.get(k)}"
                      for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ckpt.CheckpointError(f"checkpoint {source} does not match this model ({'; '.join(diff[:4])}); "
                                   f"resume with the run's own model and data settings (its config.toml)")


def restore(trainer: Any, state: dict[str, Any]) -> None:
    source = str(trainer.files.resumed_from)  # the checkpoint file
    _check_model(state, trainer.model, source)
    trainer.model.load_state_dict(state["model"])
    try:
        trainer.opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise ckpt.CheckpointError(f"checkpoint {source}: its optimizer state does not fit ({err}); resume with "
                                   f"the run's own optimizer settings") from None
    trainer.step, trainer.samples, trainer.wall_offset = state["step"], state["samples"], state["wall"]
    try:
        trainer.sampler.load_state_dict(state["sampler"])
    except (ValueError, KeyError) as err:
        raise ckpt.CheckpointError(f"checkpoint {source}: its data position does not fit this data set ({err}); "
                                   f"resume with the run's own data and seed settings") from None
    trainer.last_acc = state.get("last_acc")
    trainer.totals.update(state.get("totals", {}))
    per_rank = state["per_rank"]
    same_world = len(per_rank) == trainer.size
    trainer.balance.load_state_dict(state.get("scheduler"), per_rank[trainer.rank].get("slowdown") if same_world
                                    else None)
    if same_world:
        mine = per_rank[trainer.rank]
        torch.set_rng_state(mine["torch_rng"])
        if mine.get("cuda_rng") is not None and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"])
        if mine.get("residuals"):
            if not import_residuals(mine["residuals"]) and trainer.rank == 0:
                warnings.warn("this engine cannot import error-feedback residuals: they restart from zero")
    else:
        torch.manual_seed(trainer.config.seed * 1000 + trainer.rank + 1 + 7919 * state["step"])
        if trainer.rank == 0:
            warnings.warn(f"resuming {len(per_rank)} ranks' checkpoint on {trainer.size} ranks: error-feedback "
                          f"residuals restart from zero and dropout draws differ from an uninterrupted run")
