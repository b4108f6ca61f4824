"""cosmic-ray's test command under ``benchmarks/mutants.py``: run only the tests that execute the
mutated lines.

cosmic-ray mutates a file in place and runs one command; running a module's whole slice for each
mutant costs 1-2 minutes here. Before the mutants, ``mutants.py`` runs the slice once under
coverage with a context per test (``--cov-context=test``) and writes, for each mutated file, which
tests executed each line. This command diffs the mutated file against its pristine copy and runs:

- the tests that executed the changed lines, quickest first (``-x``: the first failure kills the
  mutant, so most mutants cost one short test);
- the whole slice (quickest first too) when a changed line runs when its module is imported (outside every function
  body: module constants, ``def`` lines, decorators, defaults, class bodies), since any test may
  depend on it and coverage credits the import to whichever test came first; and when a line ran
  only while fixtures were set up (a module-scoped fixture is credited to its first test alone);
- the whole slice with empty model and fixture caches when the file builds what those caches keep
  (``builds_cached`` in the plan: the tiny fixtures, materialised models); the cached builds of the
  pristine code would otherwise hide the mutant from every test. An entry one class builds alone
  (``built_apart``: the SmolLM2 conversion) starts as the pristine build unless the mutant changed
  that class;
- the whole slice too when no test's context executed the line: it may have run in a subprocess
  (the CLI, a served student), which coverage does not follow; a line nothing runs survives after
  the whole slice, as it would without the selection. For the same reason, the tests of files that
  start subprocesses run with every selection.

mutmut 3 selects tests the same way; cosmic-ray has no such mode, hence this script.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def changed_lines(pristine: str, mutated: str) -> set[int]:
    """1-based numbers of the pristine file's lines the mutant replaced or removed (or, for a pure
    insertion, the line before it)."""
    lines: set[int] = set()
    matcher = difflib.SequenceMatcher(a=pristine.splitlines(), b=mutated.splitlines(), autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            lines.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def function_body_lines(source: str) -> set[int]:
    """Lines inside some function's body: they run when the function is called, not at import."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [node.body]
            lines.update(range(body[0].lineno, node.end_lineno + 1))
    return lines


def mutated_files(coverage_map: dict[str, dict], pristine_dir: Path) -> list[str]:
    """The plan's files that differ from their pristine copy (the one the mutant changed)."""
    return [file for file, by_line in coverage_map.items()
            if Path(file).read_text(encoding="utf-8") != (pristine_dir / by_line["copy"]).read_text(encoding="utf-8")]


def tests_to_run(coverage_map: dict[str, dict], pristine_dir: Path) -> list[str] | None:
    """Node ids of the tests that executed a mutated line; ``None``: run the whole slice."""
    selected: set[str] = set()
    for file, by_line in coverage_map.items():
        current = Path(file).read_text(encoding="utf-8")
        pristine = (pristine_dir / by_line["copy"]).read_text(encoding="utf-8")
        if current == pristine:
            continue
        in_functions = function_body_lines(pristine)
        for line in changed_lines(pristine, current):
            contexts = by_line["lines"].get(str(line), [])
            if line not in in_functions or not contexts or "" in contexts:
                return None
            if contexts and all(c.endswith("|setup") for c in contexts):
                return None
            selected.update(c.split("|")[0] for c in contexts)
    return sorted(selected)


def reusable_entries(plan: dict, pristine_dir: Path, mutated: list[str]) -> list[str]:
    """The plan's ``built_apart`` cache entries whose builder has no line the mutant changed
    (``mutated``: the files it changed, :func:`mutated_files`)."""
    changed = {file: changed_lines((pristine_dir / plan["files"][file]["copy"]).read_text(encoding="utf-8"),
                                   Path(file).read_text(encoding="utf-8")) for file in mutated}
    return [entry for entry, where in plan.get("built_apart", {}).items()
            if not any(where["lines"][0] <= n <= where["lines"][1] for n in changed.get(where["file"], ()))]


def main() -> int:
    """``mutant_tests.py PLAN``: PLAN is the JSON ``mutants.py`` wrote (``pytest``: the command,
    ``slice``: the module's tests as pytest arguments, ``files``: the coverage map by file)."""
    plan_path = Path(sys.argv[1])
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    pristine = plan_path.parent / "pristine"
    mutated = mutated_files(plan["files"], pristine)
    if not any(plan["files"][f].get("builds_cached") for f in mutated):
        return run_tests(plan, tests_to_run(plan["files"], pristine), None)
    fresh = tempfile.mkdtemp(prefix="mutant-caches-")
    try:
        kept = os.environ.get("REASONDISTILL_CACHE")  # the pristine caches mutants.py filled
        for entry in reusable_entries(plan, pristine, mutated):
            if kept and (Path(kept) / entry).is_dir():
                shutil.copytree(Path(kept) / entry, Path(fresh) / "models" / entry)
        env = {**os.environ, "REASONDISTILL_FIXTURE_CACHE": f"{fresh}/fixtures", "REASONDISTILL_CACHE": f"{fresh}/models"}
        return run_tests(plan, None, env)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def run_tests(plan: dict, tests: list[str] | None, env: dict[str, str] | None) -> int:
    """Run ``tests`` (``None``: the whole slice), quickest first; pytest's exit code."""
    seconds = plan.get("seconds", {})  # quickest first: with -x, most mutants die in the first test
    if tests is None and not plan.get("tests"):
        return subprocess.run(f"{plan['pytest']} {plan['slice']}", shell=True, env=env).returncode
    if tests is None:
        tests = list(plan["tests"])  # the whole slice, as pytest collected it
    elif tests:
        tests = sorted(set(tests) | set(plan.get("opaque", [])))  # what subprocesses ran, coverage did not see
    if not tests:
        return 0
    tests.sort(key=lambda t: seconds.get(t, 1.0))
    return subprocess.run([*plan["pytest"].split(), *tests], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
