"""docs/architecture.md stays true: its module tables name every module of both packages, and
the stages of one /predict name modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _table_of(heading: str) -> str:
    return DOC.split(heading, 1)[1].split("\n#", 1)[0]


def test_the_tables_name_every_module() -> None:
    for package, heading in (("clipseg", "## clipseg/"), ("backend", "## backend/")):
        table = _table_of(heading)
        named = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
        root = ROOT / package
        modules = {p.name for p in root.glob("*.py") if p.name != "__init__.py"}
        packages = {f"{p.name}/" for p in root.iterdir() if (p / "__init__.py").is_file()}
        assert modules | packages <= named, (package, (modules | packages) - named)
        for name in packages:  # a package's row names each of its modules
            inner = {p.name for p in (root / name).glob("*.py")} - {"__init__.py", "__main__.py"}
            row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`"))
            assert {m for m in inner if f"`{m}`" not in row} == set(), name


def test_the_stages_of_one_predict_name_modules_that_exist() -> None:
    section = DOC.split("### One /predict, stage by stage", 1)[1].split("\n#", 1)[0]
    stages = [line for line in section.splitlines() if re.match(r"\d+\. ", line)]
    assert [int(line.split(".")[0]) for line in stages] == list(range(1, len(stages) + 1))
    paths = set(re.findall(r"`([\w/]+\.py)`", section))
    assert {"server.py", "model.py", "ls_client.py", "formats/brush.py"} <= paths
    for path in paths:
        where = ROOT / path if path.startswith("clipseg/") else ROOT / "backend" / path
        assert where.is_file(), path
