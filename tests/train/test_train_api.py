"""The README's Python API example runs under mpirun: Trainer(model, optimizer, train, test, ...).fit()."""
import json
import subprocess
import sys
from pathlib import Path

from _cli import mpi_env, mpirun_path


def test_trainer_api(tmp_path):
    worker = Path(__file__).parent / "workers" / "api_worker.py"
    proc = subprocess.run([mpirun_path(), "-np", "2", "--oversubscribe", "--bind-to", "none", sys.executable,
                           str(worker)], cwd=tmp_path, env=mpi_env(), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    oks = [line.split() for line in proc.stdout.splitlines() if line.startswith("OK")]
    assert len(oks) == 2 and oks[0][1:] == oks[1][1:]  # both ranks report the same accuracy and run directory
    run = tmp_path / oks[0][2]
    assert json.loads((run / "run.json").read_text())["state"] == "finished"
