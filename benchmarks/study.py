"""A domain study: teacher vs students on the gold dev split, and the wall time of each stage.

    python benchmarks/study.py --profile cpu                              # Home Depot, ~80 min on 2 cores
    python benchmarks/study.py --recipe recipes/qbqtc.yaml --profile cpu  # QBQTC (Chinese), ~45 min
    python benchmarks/study.py                                            # as written (a GPU box)

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
    args = p.parse_args()

    from reasondistill import Engine, load_recipe

    recipe = load_recipe(args.recipe, args.profile)
    res = Engine(runs_dir=args.runs).run(recipe)
    ann = res["annotate"].metrics
    rows = [("teacher (SmolLM2-135M after dapt, sft, DPO)", ann.get("dev_pairs"), ann.get("dev_teacher_macro_f1"),
             ann.get("dev_teacher_accuracy"), "", "", "")]
    for name, label in (("student_crsd", "student, crsd on teacher annotations"),
                        ("student_ce", "student, ce on teacher annotations"),
                        ("student_gold_ce", "student, ce on gold pairs only"),
                        ("student_mix_crsd", "student, crsd on gold + annotations (confidence-weighted)"),
                        ("student_mix_ce", "student, ce on gold + annotations (confidence >= 0.5)"),
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


if __name__ == "__main__":
    main()
