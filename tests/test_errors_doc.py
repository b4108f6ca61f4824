"""docs/errors.md: every mistake it lists has its test, and most are caught before training (issue 33)."""

import ast
import re

from .test_docs import ROOT

CAUGHT = {"load", "validate", "preflight", "stage", "first shard", "after training", "end of run", "repaired"}
BEFORE_TRAINING = {"load", "validate", "preflight", "stage", "repaired"}


def rows():
    table = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| mistake", "|---"))]


def test_every_row_names_an_existing_test_and_where_it_is_caught():
    found = rows()
    assert len(found) >= 40
    for mistake, caught, _message, _kept, test in found:
        assert caught in CAUGHT, (mistake, caught)
        path, name = re.fullmatch(r"`(tests/[\w/]+\.py)::(\w+)`", test).groups()
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{mistake}: {path} has no {name}"


def test_most_mistakes_are_caught_before_any_training_step():
    found = rows()
    early = sum(1 for r in found if r[1] in BEFORE_TRAINING)
    assert early / len(found) >= 0.8, f"{early} of {len(found)}"
