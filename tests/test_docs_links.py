"""The project points only at itself: every relative link in the README, docs/ and benchmarks/ resolves to a file
inside the repository, no text there names a team folder outside it (../shared, /work/), and every
benchmarks/results/ file the docs quote exists. Plain file checks, no MPI."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RESULT = re.compile(r"`((?:benchmarks/results/)?[\w.-]+\.(?:json|txt))`")


def _documents() -> list[Path]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return docs + sorted((REPO / "benchmarks").glob("*.md"))


def _sources() -> list[Path]:
    bench = REPO / "benchmarks"
    return _documents() + sorted(bench.glob("*.py")) + sorted(bench.glob("*.sh"))


def test_relative_links_resolve_inside_the_repository() -> None:
    bad = []
    for doc in _documents():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(REPO) or not path.exists():
                bad.append(f"{doc.relative_to(REPO)}: {target}")
    assert not bad, "links that leave the repository or point at nothing: " + ", ".join(bad)


def test_no_pointer_outside_the_repository() -> None:
    bad = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
           for p in _sources() for n, line in enumerate(p.read_text().splitlines(), 1)
           if "../shared" in line or "/work/" in line]
    assert not bad, "text that names a place outside the repository:\n" + "\n".join(bad)


def test_quoted_results_files_exist() -> None:
    results = REPO / "benchmarks" / "results"
    missing = [f"{doc.relative_to(REPO)}: {name}" for doc in _documents() for name in RESULT.findall(doc.read_text())
               if not (results / Path(name).name).exists()]
    assert not missing, "figures quoted from results files that are not in benchmarks/results/: " + ", ".join(missing)
