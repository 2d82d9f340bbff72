"""`neptune-rt report` renders from real run directories (one, and two overlaid): report.md and a
self-contained report.html exist, every PNG decodes, the HTML names and embeds each plot."""
import base64
import io
import re

import matplotlib.image

from _cli import neptune, ok
from neptune_rt.train.report import PLOTS, _compression_cell


def test_report_of_one_run(dense_run):
    result = ok(neptune(0, "report", dense_run))
    out = dense_run / "report"
    assert f"report: {out / 'report.html'}" in result.stdout
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for stem, title, *_ in PLOTS:
        image = matplotlib.image.imread(out / f"{stem}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f"![{title}]({stem}.png)" in md
        assert f"<h2>{title}</h2><img alt='{title}'" in html
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == len(PLOTS)
    for data in embedded:  # self-contained: the images decode from the HTML alone
        assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png").size > 0
    assert "src='http" not in html and "finished" in md and "dense (none)" in md


def test_report_overlays_several_runs(dense_run, int8_run, tmp_path):
    ok(neptune(0, "report", dense_run, int8_run, "--out", tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "(" in line and "run |" not in line]
    assert len(rows) == 2 and "dense (none)" in rows[0] and "int8 (int8)" in rows[1]
    # Compression is what the codec that ran gave (int8: 1 byte a value + a 4-byte scale a block of 256), not raw
    # over wire bytes, which counts the ring's 2(n-1)/n and gave 0.7x for the dense run.
    assert rows[0].endswith("| 1.0x (none) |") and rows[1].endswith("| 3.9x (int8) |"), rows


def test_compression_cell_names_the_codecs_by_share_of_bytes():
    cell = lambda ratio, used: _compression_cell({"compression": ratio, "codecs_used": used})  # noqa: E731
    assert cell(2.1, {"int8": 6000, "none": 4000, "fp16": 10}) == "2.1x (int8 60%, none 40%)"
    assert cell(1.0, {"none": 5}) == "1.0x (none)" and cell(None, {}) == "-"


def test_report_and_status_reject_a_non_run(tmp_path):
    for cmd in ("report", "status"):
        result = neptune(0, cmd, tmp_path)
        assert result.returncode == 2 and "not a run directory" in result.stderr
