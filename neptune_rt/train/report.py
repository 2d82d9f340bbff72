"""`neptune-rt report RUN [RUN ...]`: report.md and a self-contained report.html (PNG plots embedded as base64)
from the run directories' metrics.jsonl; several runs overlay their curves (e.g. int8 vs dense).
Exercised by tests/train/test_train_report.py on a real run directory.
"""
from __future__ import annotations

import base64
import html
import json
import tomllib
from pathlib import Path
from typing import Any

from neptune_rt.train.monitor import codecs_by_bytes, read_metrics

__all__ = ["write_report", "PLOTS"]

# (file stem, title, x key, y key, record kind)
PLOTS = [
    ("loss_vs_time", "Training loss vs wall time", "wall", "loss", "train"),
    ("loss_vs_samples", "Training loss vs samples", "samples", "loss", "train"),
    ("accuracy_vs_time", "Test accuracy vs wall time", "wall", "test_accuracy", "eval"),
    ("accuracy_vs_samples", "Test accuracy vs samples", "samples", "test_accuracy", "eval"),
    ("throughput", "Throughput (samples/s) vs step", "step", "samples_per_s", "train"),
    ("comm_share", "Communication share of step time vs step", "step", "comm_share", "train"),
    ("wire_bytes", "Bytes on the wire per step (this rank) vs step", "step", "wire_per_step", "train"),
    ("batch_sizes", "Batch size per rank vs step", "step", "batch_sizes", "plan"),
]


class _Run:
    def __init__(self, path: Path):
        if not (path / "metrics.jsonl").exists():
            raise ValueError(f"{path} is not a run directory (no metrics.jsonl)")
        self.path = path
        self.records = read_metrics(path / "metrics.jsonl")
        try:
            self.config = tomllib.loads((path / "config.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError):
            self.config = {}
        try:
            self.state = json.loads((path / "run.json").read_text())
        except (OSError, ValueError):
            self.state = {}
        self.label = f"{path.name} ({self.config.get('compression', '?')})"
        previous = 0
        for r in self.records:  # bytes per step from the per-interval counters
            if r.get("kind") == "train":
                if "bytes_wire" in r:
                    r["wire_per_step"] = r["bytes_wire"] / max(1, r["step"] - previous)
                previous = r["step"]

    def series(self, kind: str, x: str, y: str) -> tuple[list, list]:
        if kind == "plan":
            return self.batch_sizes()
        rows = [r for r in self.records if r.get("kind") == kind and x in r and y in r]
        return [r[x] for r in rows], [r[y] for r in rows]

    def batch_sizes(self) -> tuple[list, list]:
        """Per-rank batch sizes over steps: the scheduler's plan records (each applies from the step after it
        was adopted, held to the last step), else the equal split the train records carry."""
        plans = [r for r in self.records if r.get("kind") == "plan"]
        train = [r for r in self.records if r.get("kind") == "train"]
        if not plans:
            return [r["step"] for r in train], [r["batch_sizes"] for r in train]
        xs, ys = [p["step"] for p in plans], [p["local_batches"] for p in plans]
        if train and train[-1]["step"] > xs[-1]:
            xs, ys = xs + [train[-1]["step"]], ys + [ys[-1]]
        return xs, ys

    def plan_summary(self) -> str:
        plans = [r for r in self.records if r.get("kind") == "plan"]
        if not plans:
            return ""
        last = plans[-1]
        return (f"{self.label}: {len(plans) - 1} re-plans; from step {last['step']} B={last['global_batch']}, "
                f"per rank {last['local_batches']}, accumulation {last['accum_steps']}, lr scale "
                f"{last['lr_scale']:.3f} ({last['reason']})")

    def summary(self) -> dict[str, Any]:
        train = [r for r in self.records if r.get("kind") == "train"]
        evals = [r for r in self.records if r.get("kind") == "eval"]
        encoded = [r for r in train if r.get("bytes_encoded")]  # runs before bytes_encoded: no compression figure
        used: dict[str, int] = {}
        for r in train:
            for codec, nbytes in (r.get("codecs_used") or {}).items():
                used[codec] = used.get(codec, 0) + nbytes
        mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
        return {"run": self.label, "state": self.state.get("state", "unknown"),
                "steps": train[-1]["step"] if train else 0, "wall_s": train[-1]["wall"] if train else None,
                "final_accuracy": evals[-1]["test_accuracy"] if evals else None,
                "samples_per_s": mean([r["samples_per_s"] for r in train]),
                "comm_share": mean([r["comm_share"] for r in train]),
                "compression": sum(r["bytes_raw"] for r in encoded) / sum(r["bytes_encoded"] for r in encoded)
                if encoded else None, "codecs_used": used}


def _compression_cell(summary: dict[str, Any]) -> str:
    """The run's compression and the codecs that ran, by share of the bytes (those with at least 1%): "3.9x (int8)",
    "1.0x (none)" where the cost model sent every bucket dense, "2.1x (int8 60%, none 40%)"."""
    if not summary["compression"]:
        return "-"
    used = summary["codecs_used"]
    shown = codecs_by_bytes(used)
    shares = ", ".join(c if len(shown) == 1 else f"{c} {100 * used[c] / sum(used.values()):.0f}%" for c in shown)
    return f"{_fmt(summary['compression'])}x" + (f" ({shares})" if shares else "")


def _plot(runs: list[_Run], stem: str, title: str, x: str, y: str, kind: str, out: Path) -> tuple[Path, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    note = ""
    drawn = False
    for run in runs:
        xs, ys = run.series(kind, x, y)
        if not xs:
            continue
        if y == "batch_sizes":
            for rank in range(max(len(v) for v in ys)):
                ax.step(xs, [v[rank] if rank < len(v) else 0 for v in ys], where="post",
                        label=f"{run.label} rank {rank}")
        else:
            ax.plot(xs, [v * 100 for v in ys] if y in ("test_accuracy", "comm_share") else ys,
                    marker="o" if kind == "eval" else None, markersize=3, label=run.label)
        drawn = True
    if not drawn:
        note = "no data (this engine build does not report bytes on the wire)" if y == "wire_per_step" \
            else "no data"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel({"wall": "wall time (s)", "samples": "samples", "step": "step"}[x])
    ax.set_ylabel({"test_accuracy": "accuracy (%)", "comm_share": "% of step time", "loss": "loss",
                   "samples_per_s": "samples/s", "wire_per_step": "bytes", "batch_sizes": "samples"}[y])
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    return path, note


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def write_report(run_dirs: list[Path], out: Path | None = None) -> tuple[Path, Path]:
    runs = [_Run(p) for p in run_dirs]
    out = out or run_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in runs]
    header = "| run | state | steps | wall (s) | final test accuracy | samples/s | communication | compression |"
    table = [header, "|" + "---|" * 8]
    table += [f"| {s['run']} | {s['state']} | {s['steps']} | {_fmt(s['wall_s'])} | {_fmt(s['final_accuracy'], 'pct')} "
              f"| {_fmt(s['samples_per_s'])} | {_fmt(s['comm_share'], 'pct')} | "
              f"{_compression_cell(s)} |" for s in rows]
    incomplete = [s["run"] for s in rows if s["state"] != "finished"]
    md = ["# Training report", "", "Runs: " + ", ".join(str(p) for p in run_dirs), "", *table, ""]
    plans = [p for p in (r.plan_summary() for r in runs) if p]
    if plans:
        md += ["Batch-size scheduler, last plan:", ""] + [f"- {p}" for p in plans] + [""]
    if incomplete:
        md += [f"Not finished (curves end where the run stopped): {', '.join(incomplete)}", ""]
    body = [f"<h1>Training report</h1><p>Runs: {html.escape(', '.join(str(p) for p in run_dirs))}</p>",
            "<table border=1 cellpadding=4 style='border-collapse:collapse'>",
            "<tr>" + "".join(f"<th>{h.strip()}</th>" for h in header.strip("|").split("|")) + "</tr>"]
    for line in table[2:]:
        body.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                    + "</tr>")
    body.append("</table>")
    if plans:
        body.append("<p>Batch-size scheduler, last plan:</p><ul>" +
                    "".join(f"<li>{html.escape(p)}</li>" for p in plans) + "</ul>")
    if incomplete:
        body.append(f"<p><b>Not finished:</b> {html.escape(', '.join(incomplete))}</p>")
    for stem, title, x, y, kind in PLOTS:
        path, note = _plot(runs, stem, title, x, y, kind, out)
        md += [f"## {title}", "", f"![{title}]({path.name})", ""] + ([f"_{note}_", ""] if note else [])
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                    f"src='data:image/png;base64,{data}'>")
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>neptune_rt training report"
                         "</title></head><body style='font-family:sans-serif'>" + "\n".join(body) +
                         "</body></html>\n")
    return md_path, html_path
