"""Does distillation pay off for macro-F1? One command, several seeds, Home Depot and QBQTC (issue 37).

    python benchmarks/payoff.py --seeds 0,1,2                       # both data sets, no teacher (~25 min a seed on 2 cores)
    python benchmarks/payoff.py --seeds 0,1,2 --teacher --crsd      # + the trained teacher's arms, CRSD students
    python benchmarks/payoff.py --data qbqtc --seeds 0 --budget 250 # one data set, one seed, a smaller budget
    python benchmarks/payoff.py --seeds 1,2 --arms students         # the gold-only students only (~8 min a seed)
    python benchmarks/payoff.py --data qbqtc --arms students --epochs 8   # a trial of other student settings
                                                                    # (--epochs, --learning-rate, --gold,
                                                                    # --student-option k=v, --selector-option k=v):
                                                                    # its own runs

Per data set it builds one recipe from the study recipe (``recipes/<data>.yaml``: its gold and pool
stages and its gold-only student's options) and runs, per seed:

- CE on the gold pairs only, calibrated for macro-F1 (``calibrate: macro_f1``): the same student
  before and after the offsets, on the half of dev the offsets were not fitted on;
- the same with ``class_weights: balanced``;
- with ``--crsd``: CRSD as the study recipes set it (``w_nce: 0``, the domain's rationale), calibrated;
- uncertainty-driven against random selection (the ``active`` stage) at budgets B and 2B (two
  rounds of B pairs), each starting from the balanced, calibrated gold-only student and training every
  round's student the same way, with the pool's hidden gold
  labels standing in for a perfect teacher (``annotator: gold``);
- with ``--teacher``: the study recipe's teacher stages, its dev
  annotations, the gate (``on_fail: gold_only``), the same two selections with the trained teacher
  as annotator, and the gated student of gold + the teacher's annotations with the ship check, so
  the table shows whether any seed ships a student below its gold-only reference.

Stages already done are reused (the runs folder), so an interrupted study continues where it
stopped and a second call only prints. Per-class F1 is printed beside macro-F1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table  # noqa: E402

TEACHER_STAGES = ("dapt", "reasoning", "sft", "preference")


def payoff_recipe(data: str, seed: int, args):
    """The study recipe's data and gold-only student, and the payoff stages, as one recipe."""
    from reasondistill import load_recipe, step

    study = load_recipe(str(ROOT / "recipes" / f"{data}.yaml"), args.profile)
    by_name = {s.stage_name: s for s in study.stages}
    ref = by_name["student_gold_ce"].options
    base = {k: ref[k] for k in ("loss", "epochs", "batch_size", "learning_rate", "student_options") if k in ref}
    base.update({k: v for k, v in (("epochs", args.epochs), ("learning_rate", args.learning_rate)) if v is not None})
    if args.student_option:
        base["student_options"] = {**base.get("student_options", {}), **key_values(args.student_option)}
    gold_ce = {**base, "train_input": "pairs"}
    gold = by_name["gold"]
    if args.gold is not None:
        gold = gold.model_copy(update={"options": {**gold.options, "limit": args.gold}})
    stages = [gold, by_name["pool"]]
    if args.teacher:
        stages += [by_name[n] for n in TEACHER_STAGES]
        ann = by_name["annotate"].options
        stages.append(step("annotate", inputs={"pairs": "pool", "dev": "gold"}, limit=32, dev_rows=ann.get("dev_rows", 300),
                           shard_size=32, annotator_options=ann.get("annotator_options", {})))
    students = [
        step("distill", name="student_gold_ce", inputs={"pairs": "gold", "dev": "gold"}, **gold_ce, calibrate="macro_f1"),
        step("distill", name="student_gold_ce_balanced", inputs={"pairs": "gold", "dev": "gold"}, **gold_ce,
             class_weights="balanced", calibrate="macro_f1")]
    stages += [s for s in students if args.students == "both" or s.stage_name == "student_gold_ce_balanced"]
    if args.crsd:
        opts = {**base, "student_options": {**base["student_options"], "reasoning_tokens": 64}}
        stages.append(step("distill", name="student_gold_crsd_domain", inputs={"dev": "gold"}, **{**opts, "loss": "crsd"},
                           loss_options={"w_nce": 0.0}, sources=[{"input": "gold.pairs", "reasoning": "domain"}],
                           calibrate="macro_f1"))
    # every round student is trained as the best gold-only student is (3-seed evidence, docs/benchmarks.md),
    # so selection is compared against that student, not against a weaker plain-CE one
    winning = {**base, "class_weights": "balanced", "calibrate": "macro_f1"}
    annotators = [("gold", {})] + ([("teacher", by_name["annotate"].options.get("annotator_options", {}))]
                                   if args.teacher else [])
    if "selection" not in args.arms:
        annotators = []
    for annotator, a_opts in annotators:
        for selector in ("uncertainty", "random"):
            stages.append(step("active", name=f"active_{selector}_{annotator}", inputs={"dev": "gold"}, input="pool.pairs",
                               labeled="gold.pairs", start_student="student_gold_ce_balanced.student", rounds=2,
                               per_round=args.budget, selector=selector, annotator=annotator, annotator_options=a_opts,
                               selector_options=key_values(args.selector_option) if selector == "uncertainty" else {},
                               distill=winning, shard_size=min(args.budget, 128), on_low_parse="warn"))
    if args.teacher:  # the gated student learns from the teacher's annotations of its uncertain rows
        stages.append(step("gate", reference="student_gold_ce.student", on_fail="gold_only"))
        if "selection" in args.arms:
            stages.append(step("distill", name="student_shipped", inputs={"dev": "gold"}, **base, gate="gate.verdict",
                               sources=[{"input": "active_uncertainty_teacher.annotations"},
                                        {"input": "gold.pairs", "weight": 2.0}], calibrate="macro_f1"))
    return study.model_copy(update={"name": run_name(data, seed, args), "seed": seed, "stages": stages, "profiles": {}})


def run_name(data: str, seed: int, args) -> str:
    """``payoff-<data>-s<seed>``, plus the students' settings where they differ from the study recipe's, so
    a trial of other settings never replaces the default runs."""
    tag = "".join(f"-{k}{v:g}" for k, v in (("e", args.epochs), ("lr", args.learning_rate), ("g", args.gold)) if v is not None)
    tag += "".join(f"-{k}-{v}" for k, v in key_values(args.student_option).items())
    tag += "".join(f"-sel-{k}-{v}" for k, v in key_values(args.selector_option).items())
    # one student fewer changes the chain of stage hashes: the balanced one would be trained again
    return f"payoff-{data}-s{seed}{tag}" + ("" if args.students == "both" else f"-{args.students}")


def key_values(pairs: list[str] | None) -> dict:
    """``--student-option`` / ``--selector-option key=value`` (repeatable; the value read as JSON where it parses)."""
    import json

    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="homedepot,qbqtc")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=500, help="teacher pairs per round (B); two rounds give B and 2B")
    p.add_argument("--teacher", action="store_true", help="also train the study's teacher and run its arms")
    p.add_argument("--crsd", action="store_true", help="also the CRSD gold-only student (about 3x a CE student)")
    p.add_argument("--profile", default="cpu", help="the study recipe's profile (its students' settings, the teacher's "
                   "steps): cpu, the settings of every earlier study on this machine")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--students", default="both", choices=("both", "balanced"),
                   help="balanced: only the balanced gold-only student (a trial of its settings; no CE bar)")
    p.add_argument("--gold", type=int, help="gold pairs instead of the study recipe's 2,000 (a trial: its own runs)")
    p.add_argument("--epochs", type=int, help="the students' epochs instead of the study recipe's (a trial: its own runs)")
    p.add_argument("--learning-rate", type=float, help="the students' learning rate instead of the study recipe's")
    p.add_argument("--student-option", action="append", metavar="KEY=VALUE",
                   help="a student option over the study recipe's, e.g. added_token_init=distinct (a trial: its own runs)")
    p.add_argument("--selector-option", action="append", metavar="KEY=VALUE",
                   help="an option of the uncertainty selector, e.g. spread_over_predicted=true (a trial: its own runs)")
    p.add_argument("--arms", default="students,selection",
                   help="students (the gold-only students) and/or selection (uncertainty vs random)")
    args = p.parse_args()

    from reasondistill import Engine

    engine = Engine(runs_dir=args.runs)
    for data in args.data.split(","):
        results = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            recipe = payoff_recipe(data, seed, args)
            results[seed] = engine.run(recipe)
        report(data, results, args)


def report(data: str, results: dict, args) -> None:
    """Three tables per data set: gold-only students, selection, the gate (with --teacher)."""
    from reasondistill import get_hooks, load_recipe
    from reasondistill.recipe import resolve_domain

    labels = resolve_domain(load_recipe(str(ROOT / "recipes" / f"{data}.yaml")), get_hooks().catalogue).labels
    seeds = sorted(results)
    print(f"\n## {data}: seeds {', '.join(map(str, seeds))}, budget B = {args.budget} pairs a round\n")
    rows, gains, minority = [], [], []
    for name in ("student_gold_ce", "student_gold_ce_balanced", "student_gold_crsd_domain"):
        if name not in results[seeds[0]]:
            continue
        for when in ("before", "after"):
            vals = [results[s][name].metrics[f"calibration_heldout_macro_f1_{when}"] for s in seeds]
            f1s = {lab: statistics.mean(results[s][name].metrics[f"calibration_heldout_f1_{lab.replace(' ', '_')}_{when}"]
                                        for s in seeds) for lab in labels}
            rows.append((f"{name}, {'calibrated' if when == 'after' else 'argmax'}", ", ".join(f"{v:.3f}" for v in vals),
                         round(statistics.mean(vals), 4), round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                         ", ".join(f"{lab} {v:.3f}" for lab, v in f1s.items())))
            minority.append((rows[-1][0], min(f1s.values())))
    print("Gold-only students, on the held-out half of dev (the offsets were fitted on the other half)\n")
    print(table(("student", "macro-F1 per seed", "mean", "std", "per-class F1 (mean)"), rows))
    if "student_gold_ce" in results[seeds[0]]:
        bar = [results[s]["student_gold_ce"].metrics["calibration_heldout_macro_f1_before"] for s in seeds]
        for s_i, s in enumerate(seeds):
            best = max(results[s][n].metrics[f"calibration_heldout_macro_f1_{w}"]
                       for n in ("student_gold_ce", "student_gold_ce_balanced") for w in ("before", "after")
                       if (n, w) != ("student_gold_ce", "before"))
            gains.append(100 * (best - bar[s_i]))
        print(f"\ncalibration or weighting over CE (argmax), best per seed: {', '.join(f'{g:+.1f}' for g in gains)} "
              f"points, mean {statistics.mean(gains):+.1f} (target +2.0 on Home Depot)")
    print(f"weakest class's F1 per student (mean over seeds): {'; '.join(f'{n} {v:.3f}' for n, v in minority)}")
    for annotator in ("gold", "teacher"):
        if f"active_uncertainty_{annotator}" not in results[seeds[0]]:
            continue
        print(f"\nSelection with the {'hidden gold labels (a perfect teacher)' if annotator == 'gold' else 'trained teacher'}"
              f" as annotator: calibrated macro-F1 on the held-out half of dev, by teacher budget\n")
        rows = []
        curves = {}
        for selector in ("uncertainty", "random"):
            name = f"active_{selector}_{annotator}"
            for r, budget in ((0, 0), (1, args.budget), (2, 2 * args.budget)):
                vals = [round_score(data, s, results[s], name, r, args) for s in seeds]
                curves[(selector, budget)] = vals
                shares = [results[s][name].metrics.get(f"round{r}_selected_gold_share_{labels[0].replace(' ', '_')}")
                          for s in seeds]
                rows.append((selector, budget, ", ".join(f"{v:.3f}" for v in vals), round(statistics.mean(vals), 4),
                             "-" if shares[0] is None else f"{statistics.mean(shares):.3f}"))
        print(table(("selection", "teacher pairs", "macro-F1 per seed", "mean", f"share of '{labels[0]}' picked"), rows))
        for budget in (args.budget, 2 * args.budget):
            diff = [100 * (u - r) for u, r in zip(curves[("uncertainty", budget)], curves[("random", budget)])]
            print(f"uncertainty - random at {budget} pairs: {', '.join(f'{d:+.1f}' for d in diff)} points, "
                  f"mean {statistics.mean(diff):+.1f}")
        half = [u - r for u, r in zip(curves[("uncertainty", args.budget)], curves[("random", 2 * args.budget)])]
        print(f"uncertainty at {args.budget} vs random at {2 * args.budget}: {', '.join(f'{100 * d:+.1f}' for d in half)} "
              f"points (>= 0: random's score with half the teacher calls)")
    if "gate" in results[seeds[0]]:
        print()
        for s in seeds:
            print(f"seed {s}: {results[s]['gate'].metrics['verdict_line']}")
            if "student_shipped" in results[s]:
                print(f"seed {s}: {results[s]['student_shipped'].metrics.get('ship_check_line')}")


def round_score(data: str, seed: int, results: dict, name: str, r: int, args) -> float:
    """Round ``r``'s student of selection arm ``name``: its calibrated macro-F1 on the half of dev the
    calibration did not fit on, as the gold-only students are scored. Recorded by the ``active`` stage;
    for a run recorded before it was, the saved round student is scored again (round 0: the start
    student's own figure)."""
    recorded = results[name].metrics.get(f"round{r}_calibration_heldout_macro_f1_after")
    if recorded is not None:
        return recorded
    if r == 0:
        return results["student_gold_ce_balanced"].metrics["calibration_heldout_macro_f1_after"]
    import numpy as np
    from datasets import load_from_disk

    from reasondistill import get_hooks
    from reasondistill.plugins.student.calibration import halves, macro_f1
    from reasondistill.predictor import render_items
    from reasondistill.student_package import student_component

    run = args.runs / run_name(data, seed, args)
    hooks = get_hooks()
    domain = hooks.catalogue.get("domain", _domain_of(data))
    dev = [row for row in load_from_disk(str(run / "gold" / results["gold"].outputs["dev"]))
           if row.get("label") is not None and row["label"] >= 0]
    folder = run / name / f"round_{r}" / "distill" / "student"
    probs = student_component(folder, hooks).predictor(folder).predict_proba(*render_items(dev, domain))
    _, report = halves(len(dev), seed)
    gold = np.array([dev[i]["label"] for i in report])
    return round(macro_f1(gold, np.asarray(probs)[report].argmax(-1), len(domain.labels)), 5)


def _domain_of(data: str) -> str:
    from reasondistill import load_recipe

    return load_recipe(str(ROOT / "recipes" / f"{data}.yaml")).domain


if __name__ == "__main__":
    main()
