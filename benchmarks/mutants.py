"""Mutation testing of the core modules with cosmic-ray (``make mutants``); prints a table per module.

Each module is mutated in place, one mutant at a time, and its own slice of the suite runs against
the mutant (the slice is what makes this affordable on 2 cores: a pytest start costs ~4 s here,
the whole suite ~8 min). A mutant is *killed* when the slice fails, *survives* when it passes.
cosmic-ray writes many near-identical mutants per site (``+`` becomes each of 11 operators); with
``--max N`` a module's mutants are sampled (seeded, spread over its sites) and the table says how
many of how many ran. Survivors are listed with their diff under ``--show-survivors``.

    python benchmarks/mutants.py                        # every module, 60 mutants each
    python benchmarks/mutants.py --modules metrics,recipe --max 0   # all mutants of two modules

Needs ``pip install cosmic-ray`` (``make mutants`` installs it). The tests import the package
from the tree this script lives in (whatever ``pip install -e`` points at), so a run in a separate
``git worktree`` leaves the working copy free for editing. Never run it on a dirty tree: cosmic-ray
restores each file after its mutant, but an interrupted run can leave one mutated (``git checkout
sdk plugins`` repairs it). The tiny model fixtures and materialised models are built once into
``.mutants-cache/`` and reused by every mutant's session.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coverage import CoverageData

ROOT = Path(__file__).resolve().parents[1]
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider"

#: what every module with ``Options`` adds to its slice: the generated options reference states
#: each option's default and bounds, so a changed bound or default fails it
OPTIONS_DOC = ("tests/test_docs.py::test_options_reference_is_current "
               "tests/test_stage_hash.py::test_the_options_outside_the_hash_are_the_documented_ones")

#: module -> (its file, or several separated by spaces, and the tests that exercise it)
TARGETS: dict[str, tuple[str, str]] = {
    "metrics": ("sdk/metrics.py", "tests/test_metrics.py"),
    "fingerprint": ("sdk/fingerprint.py", "tests/test_fingerprint.py tests/test_engine.py tests/test_ml_core.py -k 'fingerprint or hash or manifest or recomputed'"),
    "recipe": ("sdk/recipe.py sdk/errors.py", f"{OPTIONS_DOC} tests/test_recipes.py tests/test_hooks.py"),
    "runstore": ("sdk/runstore.py", "tests/test_runstore.py tests/test_fingerprint.py tests/test_engine.py tests/reliability/test_faults.py::test_sigkill_during_manifest_write_leaves_no_half_manifest"),
    "engine": ("sdk/engine.py", "tests/test_engine.py tests/test_ml_core.py tests/test_runtime.py tests/test_annotate.py::test_two_processes_equal_one "
               "tests/reliability/test_faults.py::test_sigkill_during_manifest_write_leaves_no_half_manifest "
               "-k 'not slot and not star and not hand_computed'"),
    "views": ("sdk/views.py", "tests/test_student.py tests/test_ml_core.py -k 'view_layout or hand_computed'"),
    "distill_losses": ("plugins/student/losses.py", f"{OPTIONS_DOC} tests/test_ml_core.py -k 'hand_computed or stop_gradient or loss_ or soft_targets or projection or options_reference or documented_ones'"),
    "rewards": ("plugins/rewards/dimensions.py", "tests/test_rewards.py tests/test_ml_core.py -k 'rewards or reward'"),
    "slot_decoding": ("sdk/slot_decoding.py", "tests/test_slot_decoding.py tests/test_ml_core.py -k slot"),
    "generation": ("sdk/local_decoding.py", "tests/test_slot_decoding.py tests/test_annotate.py tests/test_ml_core.py "
                   "-k 'slot or star or stop_string or contract or engines or bf16'"),
    "annotate": ("plugins/annotation/annotate_stage.py plugins/annotation/sharded_run.py plugins/annotation/teacher_annotator.py", f"tests/test_annotate.py tests/test_annotate_served.py tests/test_shards.py {OPTIONS_DOC}"),
    "distill_stage": ("plugins/student/distill_stage.py plugins/student/checks.py plugins/student/sources.py plugins/student/gate_stage.py", f"tests/test_student.py tests/test_distill_trainer.py tests/test_distill_sources.py tests/test_ml_core.py tests/test_distill_mixing.py "
                      f"{OPTIONS_DOC} tests/test_two_processes.py tests/test_recipes.py -k 'distill or saved_student "
                      "or hide_verdict or loss or options_reference or documented_ones or checkpointed_run_resumes or two_processes "
                      "or contract or dropped or invalid_recipe'"),
    "teacher_stages": ("plugins/teacher/train_options.py plugins/teacher/lora.py plugins/teacher/loading.py "
                       "plugins/teacher/training.py plugins/teacher/evaluation.py plugins/teacher/dapt.py plugins/teacher/reasoning_data.py plugins/teacher/sft.py "
                       "plugins/teacher/preference.py", f"tests/test_teacher.py tests/test_ml_core.py {OPTIONS_DOC} "
                       "tests/reliability/test_bad_inputs.py tests/reliability/test_faults.py -k 'teacher or star or sft or "
                       "preference or dapt or chosen or prompts or max_length or checkpointing or lora_layers or curve "
                       "or options_reference or documented_ones or resumes'"),
    "answer_head": ("plugins/teacher/answer_head.py", "tests/test_answer_head.py"),
    "stage_hash": ("sdk/stage_hash.py", "tests/test_stage_hash.py tests/test_engine.py tests/test_ml_core.py tests/test_served.py "
                   "tests/test_parse_health.py -k 'hash or option_added or nested or settings or view or transport'"),
    "score_server": ("sdk/score_server.py sdk/score_app.py sdk/score_inputs.py sdk/score_connections.py sdk/score_metrics.py",
                     f"{OPTIONS_DOC} tests/test_serve.py tests/test_serve_traffic.py tests/test_serve_answers.py"),
    "micro_batcher": ("sdk/micro_batcher.py", "tests/test_micro_batcher.py"),
    "openai_backend": ("plugins/backends/openai_backend.py plugins/backends/openai_endpoints.py plugins/backends/openai_wire.py "
                       "plugins/backends/openai_options.py", f"{OPTIONS_DOC} tests/test_served.py tests/test_served_endpoints.py"),
    "transformers_backend": ("plugins/backends/transformers_local.py", f"{OPTIONS_DOC} tests/test_annotate.py tests/test_slot_decoding.py"),
    "runtime": ("sdk/runtime.py sdk/hf_compat.py", f"{OPTIONS_DOC} tests/test_runtime.py tests/test_hf_compat.py "
                "tests/test_student.py::test_shared_layout_standard_view_is_exact"),
    "domain": ("sdk/domain.py plugins/domains/local_services.py plugins/domains/product_search.py "
               "plugins/domains/web_search_zh.py", f"{OPTIONS_DOC} tests/test_domain.py"),
    "export": ("plugins/export/export_stage.py sdk/onnx_export.py sdk/student_package.py sdk/predictor.py sdk/student_io.py",
               f"{OPTIONS_DOC} tests/test_serve.py tests/test_student_roundtrip.py tests/test_student_contract.py tests/test_lineage.py tests/test_export_stage.py"),
    "plugin_system": ("sdk/manager.py sdk/catalogue.py sdk/hookspecs.py sdk/components.py sdk/reward_scores.py",
                      "tests/test_plugins.py tests/test_hooks.py tests/test_rewards.py tests/test_student_contract.py"),
    "data": ("sdk/data.py sdk/preflight.py", "tests/test_data.py tests/test_data_validate.py tests/test_preflight.py"),
    "evaluation": ("sdk/evaluation.py sdk/training.py", "tests/test_evaluation.py tests/test_student.py tests/test_distill_trainer.py"),
    "gate": ("plugins/student/calibration.py plugins/student/ship_check.py plugins/student/gate_stage.py",
             f"{OPTIONS_DOC} tests/test_calibration.py tests/test_ship_check.py tests/test_distill_mixing.py"),
    "student": ("plugins/student/encoder.py plugins/student/checks.py", f"{OPTIONS_DOC} tests/test_student.py tests/test_student_contract.py tests/test_student_heads.py "
                "tests/test_recipes.py::test_a_token_budget_beyond_the_students_positions_fails_validate"),
    "active": ("plugins/annotation/active_stage.py plugins/annotation/selectors.py plugins/annotation/gold_annotator.py",
               f"{OPTIONS_DOC} tests/test_active.py"),
    "annotation_store": ("plugins/annotation/parse_health.py plugins/annotation/shards.py",
                         f"{OPTIONS_DOC} tests/test_parse_health.py tests/test_annotate.py tests/test_shards.py"),
    "reports": ("plugins/pipeline/run_report.py plugins/pipeline/lifecycle_log.py sdk/run_summary.py",
                "tests/test_run_summary.py tests/test_report_plots.py tests/test_recipes.py tests/test_engine.py"),
    "cli": ("sdk/cli.py sdk/options_doc.py sdk/option_tables.py", f"tests/test_cli.py tests/test_recipes.py tests/test_plugins.py {OPTIONS_DOC} "
            "tests/test_serve.py::test_the_docs_show_every_serve_flag_with_its_bounds"),
    "run_context": ("sdk/stage_context.py sdk/model_refs.py sdk/failures.py sdk/distributed.py sdk/generators.py",
                    f"{OPTIONS_DOC} tests/test_failures.py tests/test_engine.py tests/test_hooks.py tests/test_served.py tests/test_two_processes.py"),
    "pairs": ("plugins/pipeline/pairs_stage.py", f"{OPTIONS_DOC} tests/test_data.py tests/test_recipes.py tests/test_data_validate.py"),
    "teacher_extras": ("plugins/teacher/eval_stage.py plugins/teacher/learning_curve.py plugins/rewards/reward_model.py "
                       "plugins/rewards/reward_trainer.py plugins/rewards/bradley_terry.py",
                       f"{OPTIONS_DOC} tests/test_teacher.py tests/test_reward_model.py tests/test_learning_curve.py "
                       "tests/test_hooks.py::test_hook_register_generation_backends"),
    # test_real_models' two training runs (5 minutes) test the stages on real weights, not how they
    # are built; the conversion's own test is here (a builder mutant runs the whole slice)
    "models": ("plugins/models/builtin_models.py sdk/tiny.py sdk/testing.py", "tests/test_tiny_models.py tests/test_hooks.py "
               "tests/test_real_models.py::test_real_sources_declare_their_positions_and_the_converted_teacher_pads"),
}

#: files whose code builds what the persistent caches keep (the tiny fixtures, materialised
#: models): a mutant there runs the whole slice with empty caches, or the cached builds of the
#: pristine code would hide it (session 20: the models slice passed a tokenizer mutant that way)
CACHED_BUILDERS = {"sdk/tiny.py", "sdk/testing.py", "plugins/models/builtin_models.py"}

#: cache entries (under ``REASONDISTILL_CACHE``) built by one class of a cached builder alone: a
#: mutant that changes no line of that class cannot change the entry, so its fresh caches start
#: with the pristine build. The SmolLM2 conversion costs minutes a mutant and no tiny builder
#: touches it (session 21: 20 mutants of ``models`` would have taken 2.5 hours)
BUILT_APART = {"models/smollm2-135m-instruct-fp32": ("plugins/models/builtin_models.py", "SmolLM2")}


def built_apart(root: Path) -> dict[str, dict]:
    """:data:`BUILT_APART` for the plan: each entry's file (as the plan names it) and its builder's
    first and last line."""
    out = {}
    for entry, (path, owner) in BUILT_APART.items():
        tree = ast.parse((root / path).read_text(encoding="utf-8"))
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == owner)
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        out[entry] = {"file": str(root / path), "lines": [first, node.end_lineno]}
    return out


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the file's function annotations are: signatures (never evaluated under ``from
    __future__ import annotations``) and local variables inside a function (never evaluated at
    all), so a mutant inside one (``str | None`` -> ``str << None``) is equivalent: no test can
    kill it. Class-level annotations are kept: pydantic evaluates them."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            notes = [node.returns] + [getattr(a, "annotation", None) for a in
                                      [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]]
            notes += [n.annotation for n in ast.walk(node) if isinstance(n, ast.AnnAssign)]
            spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes if n is not None]
    return spans


#: marks a line that only styles a figure (sizes, fonts, rotation): what a plot looks like, which no
#: test should pin; its mutants are left out like those in annotations. Only run_report uses it
#: (``test_architecture::test_no_mutate_marks_figure_style_only``).
NO_MUTATE = "# pragma: no mutate"


def unasked_lines(source: str) -> set[int]:
    """Line numbers (1-based) marked :data:`NO_MUTATE`."""
    return {i for i, line in enumerate(source.splitlines(), 1) if line.rstrip().endswith(NO_MUTATE)}


def drop_equivalent(db: Path) -> int:
    """Remove mutants inside annotations (see :func:`annotation_spans`) and on lines marked
    :data:`NO_MUTATE`; returns how many."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT job_id, module_path, start_pos_row, start_pos_col FROM mutation_specs").fetchall()
    sources = {path: Path(path).read_text(encoding="utf-8") for path in {r[1] for r in rows}}
    spans = {path: annotation_spans(text) for path, text in sources.items()}
    unasked = {path: unasked_lines(text) for path, text in sources.items()}
    drop = [(job,) for job, path, row, col in rows
            if row in unasked[path] or any(a <= (row, col) < b for a, b in spans[path])]
    con.executemany("DELETE FROM mutation_specs WHERE job_id = ?", drop)
    con.executemany("DELETE FROM work_items WHERE job_id = ?", drop)
    con.commit()
    con.close()
    return len(drop)


def sample(db: Path, limit: int, seed: int) -> tuple[int, int]:
    """Keep ``limit`` mutants of the session (all when 0), spread over sites; (kept, total)."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT job_id, module_path, start_pos_row, start_pos_col FROM mutation_specs ORDER BY job_id").fetchall()
    total = len(rows)
    if limit and total > limit:
        rng = random.Random(seed)
        by_site: dict[tuple[str, int, int], list[str]] = {}
        for job, path, row, col in rows:
            by_site.setdefault((path, row, col), []).append(job)
        sites = list(by_site.values())
        rng.shuffle(sites)
        keep: list[str] = []
        while len(keep) < limit:  # one mutant per site per round, so every site gets its turn
            for jobs in sites:
                if jobs and len(keep) < limit:
                    keep.append(jobs.pop(rng.randrange(len(jobs))))
        drop = [(j,) for j, _, _, _ in rows if j not in set(keep)]
        con.executemany("DELETE FROM mutation_specs WHERE job_id = ?", drop)
        con.executemany("DELETE FROM work_items WHERE job_id = ?", drop)
        con.commit()
    kept = con.execute("SELECT count(*) FROM work_items").fetchone()[0]
    con.close()
    return kept, total


def outcomes(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(db)
    out: dict[str, list[str]] = {}
    for outcome, diff in con.execute("SELECT test_outcome, diff FROM work_results"):
        out.setdefault((outcome or "none").lower(), []).append(diff or "")
    con.close()
    return out


def test_environment(work: Path) -> dict[str, str]:
    """The environment of every test session: this tree's package first on the path (a
    ``reasondistill`` folder of links to ``sdk/``, ``plugins/`` and ``recipes/``), no bytecode
    (two mutants of one size written within a second would share a stale ``.pyc``), and
    persistent model caches."""
    package = work / "path" / "reasondistill"
    if not package.exists():
        package.mkdir(parents=True)
        for entry in (ROOT / "sdk").iterdir():
            if entry.name != "__pycache__":
                (package / entry.name).symlink_to(entry)
        for sub in ("plugins", "recipes"):
            (package / sub).symlink_to(ROOT / sub)
    cache = ROOT / ".mutants-cache"
    cache.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(package.parent), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
            "REASONDISTILL_FIXTURE_CACHE": str(cache / "fixtures"), "REASONDISTILL_CACHE": str(cache / "models")}


def file_plan(path: str, copy: str, by_line: dict[int, list[str]]) -> dict:
    """One mutated file's entry in the plan: its pristine copy's name, the tests that executed each
    line, and whether it builds what the model caches keep (:data:`CACHED_BUILDERS`)."""
    return {"copy": copy, "lines": {str(n): sorted(ctx) for n, ctx in by_line.items()},
            "builds_cached": path in CACHED_BUILDERS}


def coverage_plan(name: str, work: Path, env: dict[str, str]) -> tuple[Path, float, str]:
    """Runs the module's slice once under coverage with a context per test and writes the plan
    ``mutant_tests.py`` reads (which tests executed each line of the module's files, and a pristine
    copy of each); returns (the plan, the slice's seconds, the slice's output when it failed)."""
    file, tests = TARGETS[name]
    data_file = work / f"{name}.coverage"
    started = time.time()
    run = subprocess.run(f"{PYTEST} --durations=0 --durations-min=0 --cov=reasondistill --cov-context=test --cov-report= "
                         f"{tests}", shell=True, cwd=ROOT, capture_output=True, text=True,
                         env={**env, "COVERAGE_FILE": str(data_file)})
    seconds = time.time() - started
    if run.returncode != 0:
        return work, seconds, run.stdout[-1500:]
    data = CoverageData(basename=str(data_file))
    data.read()
    measured = {str(Path(f).resolve()): f for f in data.measured_files()}
    pristine = work / "pristine"
    pristine.mkdir(exist_ok=True)
    files = {}
    for i, path in enumerate(file.split()):
        source = ROOT / path
        copy = f"{i}-{source.name}"
        shutil.copyfile(source, pristine / copy)
        by_line = data.contexts_by_lineno(measured[str(source.resolve())]) if str(source.resolve()) in measured else {}
        files[str(source)] = file_plan(path, copy, by_line)
    plan = work / f"{name}.plan.json"
    seconds_by_test: dict[str, float] = {}  # pytest's --durations lines: "0.52s call     tests/x.py::t[a b]"
    for match in re.finditer(r"^([0-9.]+)s (?:setup|call|teardown) +(.+?)\s*$", run.stdout, re.M):
        seconds_by_test[match[2]] = seconds_by_test.get(match[2], 0.0) + float(match[1])
    listed = subprocess.run(f"{PYTEST} --collect-only {tests}", shell=True, cwd=ROOT, capture_output=True, text=True,
                            env=env).stdout
    collected = [line.strip() for line in listed.splitlines() if "::" in line]
    # tests that run the package in a subprocess (the CLI, a served student): coverage does not see
    # what they execute, so every mutant runs them too
    opaque_files = {t.split("::")[0] for t in collected
                    if re.search(r"subprocess|start_server\(|Popen", (ROOT / t.split("::")[0]).read_text(encoding="utf-8"))}
    plan.write_text(json.dumps({"pytest": PYTEST, "slice": tests, "files": files, "seconds": seconds_by_test,
                                "tests": collected, "opaque": [t for t in collected if t.split("::")[0] in opaque_files],
                                "built_apart": built_apart(ROOT)}))
    return plan, seconds, ""


def run_module(name: str, limit: int, seed: int, work: Path, show: bool) -> dict:
    file, tests = TARGETS[name]
    work = work / name
    work.mkdir()
    env = test_environment(work)
    subprocess.run(f"{PYTEST} {tests}", shell=True, cwd=ROOT, capture_output=True, env=env)  # fills the caches
    started = time.time()
    plan, seconds, failed = coverage_plan(name, work, env)
    if failed:
        return {"module": name, "error": "its tests fail without a mutant:\n" + failed}
    config = work / f"{name}.toml"
    db = work / f"{name}.sqlite"
    config.write_text(f"""[cosmic-ray]
module-path = {json.dumps([str(ROOT / f) for f in file.split()])}
timeout = {max(30.0, 4 * seconds):.0f}
excluded-modules = []
test-command = "{sys.executable} {ROOT / 'benchmarks' / 'mutant_tests.py'} {plan}"

[cosmic-ray.distributor]
name = "local"
""")
    subprocess.run(["cosmic-ray", "init", str(config), str(db)], cwd=ROOT, check=True, capture_output=True, env=env)
    equivalent = drop_equivalent(db)
    kept, total = sample(db, limit, seed)
    subprocess.run(["cosmic-ray", "exec", str(config), str(db)], cwd=ROOT, check=True, capture_output=True, env=env)
    res = outcomes(db)
    killed, survived = len(res.get("killed", [])), len(res.get("survived", []))
    incompetent = len(res.get("incompetent", []))  # timeouts and mutants that do not import
    done = killed + survived
    if show:
        for diff in res.get("survived", []):
            print(f"--- survived in {file}\n{diff}")
    return {"module": name, "file": file, "mutants": total, "in_annotations": equivalent, "ran": kept, "killed": killed, "survived": survived,
            "incompetent": incompetent, "score": round(killed / done, 3) if done else None,
            "minutes": round((time.time() - started) / 60, 1), "slice_seconds": round(seconds, 1),
            "survivors": res.get("survived", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--max", type=int, default=60, help="mutants sampled per module (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-survivors", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rd-mutants-") as tmp:
        for name in [m.strip() for m in args.modules.split(",") if m.strip()]:
            row = run_module(name, args.max, args.seed, Path(tmp), args.show_survivors)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "survivors"}), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\n| module | mutants ran (of all, not counting those in annotations) | killed | survived | timeouts/unimportable | score | minutes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['module']} | - | - | - | - | {r['error'].splitlines()[0]} | - |")
            continue
        score = f"{r['score']:.0%}" if r["score"] is not None else "-"
        print(f"| {r['file']} | {r['ran']} of {r['mutants']} | {r['killed']} | {r['survived']} | {r['incompetent']} "
              f"| {score} | {r['minutes']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
