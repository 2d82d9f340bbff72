"""benchmarks/hetero.py --plot: a goodput result file becomes a PNG beside it (accuracy against time, the
scheduler's global batch); a file without evaluations is refused by name."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "hetero_goodput_momentum_model_seed1.json"


def plot(*paths):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hetero.py"), "--plot", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_plot_writes_a_png_beside_the_json(tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(RESULT, tmp_path / "run.json")
    done = plot(tmp_path / "run.json")
    assert done.returncode == 0, done.stderr[-2000:]
    png = (tmp_path / "run.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_plot_refuses_a_file_without_goodput_evaluations(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{k: v for k, v in r.items() if k != "evals"} for r in json.loads(RESULT.read_text())]
    (tmp_path / "old.json").write_text(json.dumps(rows))
    done = plot(tmp_path / "old.json")
    assert done.returncode != 0 and "old.json: no goodput rows with evaluations" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "old.png").exists()
