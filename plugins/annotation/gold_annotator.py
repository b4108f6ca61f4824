"""The ``gold`` annotator: the pool's hidden gold labels stand in for a perfect teacher.

Why: to measure what a selection strategy (the ``active`` stage) is worth apart from the
teacher's errors, the same budget is spent once on the trained teacher and once on labels that
are always right. The pool keeps its labels as ``gold_label`` when ``pairs`` hides them; the
reasoning is the domain's rule-written rationale for that label (empty where the domain writes
none). No model runs, so its rows cost no teacher tokens.
"""

from __future__ import annotations

from reasondistill import Annotator, hookimpl
from reasondistill.errors import DataError


class GoldAnnotator(Annotator):
    name = "gold"
    description = "The pool's hidden gold labels as a perfect teacher (to measure selection apart from teacher errors)."
    needs_teacher = False

    def annotate(self, ctx, pairs, teacher, options):
        from datasets import Dataset

        domain, k = ctx.domain, len(ctx.domain.labels)
        out = []
        for i, row in enumerate(pairs):
            label = next((row.get(c) for c in ("gold_label", "label") if isinstance(row.get(c), int) and row[c] >= 0), None)
            if label is None:
                raise DataError(f"annotator gold: row {i} (pair_id {row.get('pair_id')!r}) has no gold label; the gold "
                                "annotator needs a pool whose labels were hidden (pairs: hide_labels: true)")
            reasoning = domain.rationale(row, label) if domain.writes_rationale else ""
            out.append({**row, "label": label, "reasoning": reasoning,
                        "completion": domain.format_completion(reasoning, label),
                        "label_probs": [float(j == label) for j in range(k)], "confidence": 1.0,
                        "parse_ok": True, "first_try_ok": True, "teacher": "gold-labels", "gold_label": label,
                        "new_tokens": 0, "error": None})
        return Dataset.from_list(out)


@hookimpl
def register_annotators(register):
    register(GoldAnnotator())
