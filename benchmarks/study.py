"""A domain study: teacher vs students on the gold dev split, and the wall time of each stage.

    python benchmarks/study.py --profile cpu                              # Home Depot, ~80 min on 2 cores
    python benchmarks/study.py --recipe recipes/qbqtc.yaml --profile cpu  # QBQTC (Chinese), ~45 min
    python benchmarks/study.py                                            # as written (a GPU box)
    python benchmarks/study.py --profile cpu --seeds 0,1,2                # every stage under 3 seeds
    python benchmarks/study.py --profile cpu --seeds 0,1,2 --teacher-seed 0  # 3 student seeds, 1 teacher

With ``--seeds`` the whole recipe (teacher included) runs once per seed, each under its own run
name (``homedepot-s1``), and one table gives every student's dev macro-F1 per seed with mean and
standard deviation, the teacher's, the gate's verdict per seed, and the target check: the best
student that uses the teacher against CE on gold only, seed by seed. With ``--teacher-seed N`` the
stages before the first ``distill`` (data, teacher, annotation) run under seed N in every run and
only the students' seed varies: the runs (``homedepot-t0-s1``) take the teacher stages of run
``homedepot-sN`` (hard links, checked against their hash and fingerprints like any reused stage),
so each extra seed costs its students only (about an hour on 2 cores instead of three).

Runs a study recipe (``recipes/homedepot.yaml`` by default; stages already done are reused, so
a second call only prints) and compares, on the dev split: the teacher (its dev annotations);
the student by CRSD on the teacher's annotations of the label-hidden pool; the student by
``ce`` on the same annotations; the student by ``ce`` on the gold pairs only (and, where the
recipe has one, with the student's vocabulary as shipped: ``student_gold_ce_english_vocab``).
Students are scored on the whole dev split and, for the retention column, on the pairs the
teacher annotated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "homedepot.yaml"))
    p.add_argument("--profile", default=None)
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--seeds", default=None, help="comma-separated seeds: the whole recipe once per seed")
    p.add_argument("--teacher-seed", type=int, default=None,
                   help="with --seeds: one teacher (trained under this seed), the students under each seed")
    p.add_argument("--through", default=None,
                   help="run the recipe's stages up to and including this one (the later ones keep their cache)")
    p.add_argument("--reference", default="student_gold_ce", help="the gold-only student (the bar)")
    args = p.parse_args()

    from reasondistill import Engine, load_recipe

    recipe = load_recipe(args.recipe, args.profile)
    if args.through:
        names = [s.stage_name for s in recipe.stages]
        if args.through not in names:
            p.error(f"--through {args.through}: no such stage; stages: {', '.join(names)}")
        recipe = recipe.model_copy(update={"stages": recipe.stages[:names.index(args.through) + 1]})
    if args.seeds:
        return seeds_table(recipe, [int(x) for x in args.seeds.split(",")], args)
    res = Engine(runs_dir=args.runs).run(recipe)
    ann = res["annotate"].metrics
    rows = [("teacher (SmolLM2-135M after dapt, sft, DPO)", ann.get("dev_pairs"), ann.get("dev_teacher_macro_f1"),
             ann.get("dev_teacher_accuracy"), "", "", "")]
    for name, label in (("student_crsd", "student, crsd on teacher annotations"),
                        ("student_ce", "student, ce on teacher annotations"),
                        ("student_gold_ce", "student, ce on gold pairs only"),
                        ("student_mix_crsd", "student, crsd on gold + annotations"),
                        ("student_mix_crsd_conf", "student, crsd on gold + annotations (confidence >= 0.5)"),
                        ("student_mix_ce", "student, ce on gold + annotations"),
                        ("student_mix_ce_conf", "student, ce on gold + annotations (confidence >= 0.5)"),
                        ("student_gold_crsd_teacher", "student, crsd (w_nce 0) on gold pairs, the teacher's STaR chains"),
                        ("student_gold_crsd_domain", "student, crsd (w_nce 0) on gold pairs, the domain's rationale"),
                        ("student_gold_ce_english_vocab", "student, ce on gold pairs only, vocabulary as shipped")):
        if name not in res:
            continue
        m = res[name].metrics
        rows.append((label, m.get("vs_teacher_gold_pairs"), m.get("vs_teacher_student_macro_f1"),
                     m.get("vs_teacher_student_accuracy"), m.get("dev_macro_f1"), m.get("dev_accuracy"),
                     m.get("vs_teacher_retention_macro_f1")))
    print(f"Study {recipe.name} (domain {recipe.domain}, profile {args.profile or 'none'}): "
          f"{res['gold'].metrics.get('pairs', '?')} gold pairs, pool of {ann.get('pairs')} annotated pairs "
          f"(parse rate {ann.get('parse_rate')}, {ann.get('pairs_per_s')} pairs/s)")
    print(table(("system", "teacher-annotated dev pairs", "macro-F1 there", "accuracy there",
                 "macro-F1, whole dev", "accuracy, whole dev", "retention (student / teacher macro-F1)"), rows))
    if "gate" in res:
        print("\n" + res["gate"].metrics["verdict_line"])
    print("\nwall time per stage (seconds, as run)")
    print(table(("stage", "seconds"), [(name, round(r.seconds, 1)) for name, r in res.items()]
                + [("total", round(sum(r.seconds for r in res.values()), 1))]))


def seeds_table(recipe, seeds: list[int], args) -> None:
    """Run ``recipe`` under each seed and print dev macro-F1 per system and seed, mean and std."""
    import statistics

    from reasondistill import Engine

    engine = Engine(runs_dir=args.runs)
    per: dict[str, list[float]] = {}
    gates, uses_teacher = [], {}
    for seed in seeds:
        run = recipe.model_copy(update={"seed": seed, "name": f"{recipe.name}-s{seed}"})
        if args.teacher_seed is not None:
            run = pin_teacher(run, args.teacher_seed, args.runs, recipe.name)
        res = engine.run(run)
        per.setdefault("teacher (its dev annotations)", []).append(res["annotate"].metrics.get("dev_teacher_macro_f1"))
        for spec in run.stages:
            if spec.uses == "distill":
                m = res[spec.stage_name].metrics
                per.setdefault(spec.stage_name, []).append(m.get("dev_macro_f1"))
                uses_teacher[spec.stage_name] = uses_the_teacher(spec, m)
        if "gate" in res:
            gates.append(f"seed {seed}: {res['gate'].metrics['verdict_line']}")
    rows = []
    for name, values in per.items():
        vals = [v for v in values if v is not None]
        mean = statistics.mean(vals) if vals else None
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append((name, ", ".join(f"{v:.3f}" for v in vals), round(mean, 4) if mean is not None else "-", round(std, 4)))
    teacher = "" if args.teacher_seed is None else f", one teacher (seed {args.teacher_seed})"
    print(f"Study {recipe.name} (profile {args.profile or 'none'}), seeds {', '.join(map(str, seeds))}{teacher}: "
          f"dev macro-F1 on the whole dev split (the teacher: on the dev pairs it annotated)")
    print(table(("system", "macro-F1 per seed", "mean", "std"), rows))
    for line in gates:
        print(line)
    bar = per.get(args.reference)
    teacher_students = [n for n in per if n != args.reference and uses_teacher.get(n)]
    if bar and teacher_students:
        best = max(teacher_students, key=lambda n: statistics.mean(per[n]))
        gain = [100 * (a - b) for a, b in zip(per[best], bar)]
        verdict = "MET" if statistics.mean(gain) >= 1.0 else "NOT MET"
        print(f"target (best teacher-using student >= {args.reference} + 1.0 point): {best} "
              f"{', '.join(f'{g:+.1f}' for g in gain)} points per seed, mean {statistics.mean(gain):+.1f}: {verdict}")


def uses_the_teacher(spec, metrics: dict) -> bool:
    """Does this distill stage learn from the teacher: its labels (a source the manifest marks
    ``teacher``, or the default annotations input) or its reasoning (``reasoning_from``)?"""
    sources = spec.options.get("sources") or []
    if any(src.get("reasoning_from") for src in sources):
        return True
    flags = [v for k, v in metrics.items() if k.startswith("source_") and k.endswith("_teacher")]
    return any(flags) if flags else "pairs" not in str(spec.options.get("train_input", "annotations"))


def pin_teacher(run, teacher_seed: int, runs: Path, study: str):
    """``run`` with every stage before the first ``distill`` pinned to ``teacher_seed``, named
    ``{study}-t{teacher_seed}-s{seed}``, and those stages hard-linked from run ``{study}-s{teacher_seed}``
    where that run has them and ``run`` does not (the teacher's own seed is that run itself).

    The engine keeps each run in its own folder and has no cache across runs; the links let a
    student seed reuse the teacher without copying its checkpoints. A linked stage is reused only
    if its hash and fingerprints match (the engine checks), else it is recomputed, which replaces
    files rather than writing into them, so the teacher run is never changed.
    """
    import os
    import shutil

    first_student = next((i for i, s in enumerate(run.stages) if s.uses == "distill"), len(run.stages))
    stages = [s.model_copy(update={"seed": teacher_seed}) if i < first_student else s
              for i, s in enumerate(run.stages)]
    teacher_run = f"{study}-s{teacher_seed}"
    name = teacher_run if run.seed == teacher_seed else f"{study}-t{teacher_seed}-s{run.seed}"
    source, target = runs / teacher_run, runs / name
    for spec in stages[:first_student]:
        src, dst = source / spec.stage_name, target / spec.stage_name
        if source != target and (src / "manifest.json").exists() and not dst.exists():
            shutil.copytree(src, dst, copy_function=os.link)
    return run.model_copy(update={"stages": stages, "name": name})


if __name__ == "__main__":
    main()
