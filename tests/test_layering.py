"""The layering rule, read from the source with ast: no stage imports another; the spine imports no stage."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"sft", "preference", "reward", "collect", "eval", "serve"}
TOP_FLOOR = {"cli.py", "pipeline.py"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_stage_imports_another_stage():
    for stage in STAGES:
        for path in (ROOT / stage).rglob("*.py"):
            others = imported_packages(path) & (STAGES - {stage})
            assert not others, f"{path.relative_to(ROOT)} imports stage(s) {sorted(others)}"


def test_spine_imports_no_stage_except_its_top_floor():
    for path in (ROOT / "alignkit").rglob("*.py"):
        if path.name in TOP_FLOOR:
            continue
        stages = imported_packages(path) & STAGES
        assert not stages, f"{path.relative_to(ROOT)} (spine) imports stage(s) {sorted(stages)}"


def test_the_rule_detects_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from preference.train import run\nimport eval.gate\n")
    assert imported_packages(bad) & STAGES == {"preference", "eval"}
