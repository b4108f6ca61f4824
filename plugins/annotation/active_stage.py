"""The ``active`` stage: the teacher labels only the pool rows the student is least sure of.

Each round the current student scores the rows not yet annotated, a selector (the
``register_selectors`` hook: ``uncertainty`` or ``random`` built in) picks ``per_round`` of them,
the annotator labels those (sharded and resumable, as in ``annotate``), and a fresh student is
trained on the labeled start set plus every annotation so far, with the options of ``distill``.
The teacher budget is exact: ``rounds x per_round`` pairs sent, whatever parses. A round is
recorded in ``rounds.json`` once its student is saved, so a rerun continues at the first round
not recorded (inside a round, annotation shards and training checkpoints resume too).

Why a loop stage and not a recipe of annotate/distill stages: the rows of round ``r`` depend on the
student of round ``r - 1``, and the number of rounds is an option, so the loop cannot be written
as a fixed list of stages. Each round's student is trained by the ``distill`` stage itself, in a
folder of its own, so it is the same code and the same options as everywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from reasondistill import ComponentRef, NestedOptions, Stage, StageResult, hookimpl
from reasondistill.errors import DataError, PluginError
from reasondistill.evaluation import evaluate_student
from reasondistill.fingerprint import write_atomic
from reasondistill.generators import current_teacher
from reasondistill.manager import validate_nested
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.annotation.sharded_run import annotate_sharded
from reasondistill.plugins.annotation.shards import merge_shards
from reasondistill.predictor import render_items
from reasondistill.recipe import OUTPUT_REF
from reasondistill.student_package import student_component

#: distill options this stage sets itself, round by round
SET_BY_THE_STAGE = ("train_input", "sources", "gate")


class ActiveOptions(ParseHealthOptions):
    input: str = Field("pairs", description="the unlabeled pool the teacher may annotate", json_schema_extra=OUTPUT_REF)
    labeled: str | None = Field(None, description="labeled pairs (e.g. `gold.pairs`) every round's student also "
                                "trains on; the student of round 0 learns from them alone", json_schema_extra=OUTPUT_REF)
    labeled_weight: float = Field(1.0, gt=0, description="loss weight of the labeled rows beside the annotations")
    start_student: str | None = Field(None, description="an earlier student (e.g. `student_gold_ce.student`) that "
                                      "picks round 1's rows, instead of training round 0's student on `labeled`",
                                      json_schema_extra=OUTPUT_REF)
    rounds: int = Field(2, ge=1, le=100, description="annotate-and-retrain rounds")
    per_round: int = Field(500, ge=1, description="pairs sent to the annotator per round (the teacher budget of a "
                                                  "round; a pair counts whether or not its answer parses)")
    selector: ComponentRef("selector") = Field("uncertainty", description="how rows are picked (register_selectors)")
    selector_options: NestedOptions = Field(default_factory=dict, description="the selector's own options")
    annotator: ComponentRef("annotator") = Field("teacher", description="who labels the picked rows: `teacher`, or "
                                                 "`gold` (the pool's hidden labels as a perfect teacher)")
    annotator_options: NestedOptions = Field(default_factory=dict, description="the annotator's own options")
    distill: dict[str, Any] = Field(default_factory=dict, description="the options of each round's student, as "
                                    "for the distill stage (loss, epochs, class_weights, calibrate, ...); its "
                                    "training rows are set by this stage")
    shard_size: int = Field(64, ge=1, description="annotated rows written per shard (the unit of resume)")
    max_failed_share: float = Field(0.02, ge=0, le=1, description="as for annotate: the share of rows that may end "
                                    "with a backend error before the stage stops (its work kept)")

    @field_validator("distill")
    @classmethod
    def _rows_are_the_stages(cls, value: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in SET_BY_THE_STAGE if k in value]
        if given:
            raise ValueError(f"{', '.join(given)}: set by the active stage (the labeled pairs and the annotations so "
                             "far); leave out of distill")
        return value


class ActiveStage(Stage):
    name = "active"
    description = "Uncertainty-driven annotation: the teacher labels what the student is least sure of; R rounds."
    Options = ActiveOptions
    generates = True

    def options(self, raw=None, context=None) -> ActiveOptions:
        opts = ActiveOptions.model_validate(raw or {}, context=context)
        sel = validate_nested(context, "selector", opts.selector, opts.selector_options, "selector_options")
        ann = validate_nested(context, "annotator", opts.annotator, opts.annotator_options, "annotator_options")
        dist = validate_nested(context, "stage", "distill", opts.distill, "distill")
        # typed from here on; the round students' options stay as set (each round adds its sources)
        return opts.model_copy(update={"selector_options": sel, "annotator_options": ann,
                                       "distill": dist.model_dump(exclude_unset=True)})

    def model_roles(self, recipe, options: ActiveOptions, catalogue) -> tuple[str, ...]:
        """The round students start from ``models.student``; the annotator's own roles."""
        annotator = catalogue.get("annotator", options.annotator)
        return ("student", *annotator.model_roles(recipe, options.annotator_options, catalogue))

    def preflight(self, check, options: ActiveOptions) -> None:
        """The round students' dry call: the distill stage's own, with this stage's options."""
        distill = check.hooks.catalogue.get("stage", "distill")
        distill.preflight(check, distill.options(options.distill))

    def run(self, ctx, options: ActiveOptions) -> StageResult:
        cat = ctx.hooks.catalogue
        selector, sel_plugin = cat.get("selector", options.selector), cat.kind("selector")[options.selector].plugin
        s_opts = selector.options(options.selector_options)
        annotator = cat.get("annotator", options.annotator)
        a_opts = annotator.options(options.annotator_options)
        teacher = (current_teacher(ctx) or "") if annotator.needs_teacher else ""
        pool = ctx.load_dataset(options.input)
        rows = pool.to_list()
        record_path = ctx.dir / "rounds.json"
        rounds: list[dict[str, Any]] = json.loads(record_path.read_text()) if record_path.exists() else []
        student = self._start(ctx, options, rounds, record_path)
        taken = [i for r in rounds if r["round"] > 0 for i in r["selected"]]
        for r in range(len(rounds), options.rounds + 1):
            started = time.time()
            folder = ctx.dir / f"round_{r}"
            chosen, cold = self._choose(ctx, folder, rows, taken, student, selector, s_opts, sel_plugin, options, r)
            monitor = ParseMonitor("active", options, getattr(a_opts, "max_new_tokens", None),
                                   f"The shards written are kept in {folder / 'shards'}; a rerun resumes from them")
            annotate_sharded(ctx, annotator, pool.select(chosen), teacher, a_opts, options.shard_size,
                             folder / "shards", options.max_failed_share, monitor)
            annotations = merge_shards(folder / "shards")
            taken += chosen
            so_far = merge_shards_of(ctx, r)
            so_far.save_to_disk(str(folder / "annotations_so_far"))
            trained = train_round(ctx, folder, options, {"annotations": folder / "annotations_so_far"})
            student = folder / "distill" / "student"
            rounds.append(round_record(r, chosen, cold, annotations, trained, ctx.domain, time.time() - started))
            write_atomic(record_path, json.dumps(rounds, indent=1))
        return self._result(ctx, options, rounds)

    def _start(self, ctx, options: ActiveOptions, rounds: list, record_path) -> Any:
        """Round 0: the student that picks round 1's rows (an earlier one, or one trained on
        ``labeled``), or None for a cold start; recorded like any round."""
        if options.start_student:
            folder = ctx.input(options.start_student)
        elif options.labeled:
            folder = ctx.dir / "round_0" / "distill" / "student"
        else:
            folder = None
        if rounds:
            return folder if rounds[-1]["round"] == 0 else ctx.dir / f"round_{rounds[-1]['round']}" / "distill" / "student"
        started = time.time()
        if options.labeled and not options.start_student:
            trained = train_round(ctx, ctx.dir / "round_0", options, {})
        elif folder is not None and ctx.has_input("dev"):
            trained = evaluate_folder(ctx, folder)
        else:
            trained = {}
        rounds.append(round_record(0, [], False, None, trained, ctx.domain, time.time() - started))
        write_atomic(record_path, json.dumps(rounds, indent=1))
        return folder

    @staticmethod
    def _choose(ctx, folder, rows, taken, student, selector, s_opts, plugin: str, options: ActiveOptions,
                r: int) -> tuple[list[int], bool]:
        """This round's pool positions: kept from an interrupted try, else the selector's pick
        among the rows not yet annotated (at random on a cold start: no student yet)."""
        kept = folder / "selected.json"
        if kept.exists():
            saved = json.loads(kept.read_text())
            return saved["positions"], saved["cold_start"]
        left = sorted(set(range(len(rows))) - set(taken))
        if not left:
            raise DataError(f"active: round {r}: every row of {options.input} ({len(rows)}) is annotated; lower rounds "
                            f"or per_round (rounds x per_round = {options.rounds * options.per_round})")
        candidates = [rows[i] for i in left]
        cold = student is None
        seed = ctx.seed * 1000 + r
        if cold:
            picked = np.random.default_rng(seed).choice(len(left), min(options.per_round, len(left)), replace=False).tolist()
        else:
            probs = score_pool(ctx, student, candidates) if selector.needs_probabilities else None
            picked = selector.select(candidates, probs, options.per_round, seed, s_opts)
        check_pick(picked, len(candidates), options.per_round, plugin)
        positions = [left[i] for i in picked]
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(kept, json.dumps({"positions": positions, "cold_start": cold}))
        return positions, cold

    @staticmethod
    def _result(ctx, options: ActiveOptions, rounds: list[dict[str, Any]]) -> StageResult:
        last = rounds[-1]["round"]
        merge_shards_of(ctx, last).save_to_disk(str(ctx.dir / "annotations"))
        metrics: dict[str, Any] = {"rounds": options.rounds, "teacher_pairs": sum(len(r["selected"]) for r in rounds),
                                   "selector": options.selector, "annotator": options.annotator}
        for r in rounds:
            for key, value in r["metrics"].items():
                metrics[f"round{r['round']}_{key}"] = value
        final = rounds[-1]["metrics"]
        metrics.update({k: v for k, v in final.items() if k.startswith("dev_") or k == "train_rows"})
        outputs = {"student": f"round_{last}/distill/student", "annotations": "annotations", "rounds": "rounds.json"}
        return StageResult(outputs=outputs, metrics=metrics)


def merge_shards_of(ctx, last: int):
    """Every round's annotations up to ``last``, with the round each row came from."""
    from datasets import concatenate_datasets

    parts = []
    for r in range(1, last + 1):
        ds = merge_shards(ctx.dir / f"round_{r}" / "shards")
        parts.append(ds.add_column("round", [r] * len(ds)))
    return concatenate_datasets(parts)


def score_pool(ctx, student, rows: list[dict[str, Any]]) -> np.ndarray:
    """The current student's label probabilities on the candidate rows."""
    predictor = student_component(student, ctx.hooks).predictor(student)
    queries, items = render_items(rows, ctx.domain)
    return np.asarray(predictor.predict_proba(queries, items))


def check_pick(picked: Any, n: int, k: int, plugin: str) -> None:
    """A selector's answer is ``min(k, n)`` distinct positions in range; else one line naming it."""
    want = min(k, n)
    ok = isinstance(picked, (list, tuple)) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                   for i in picked)
    if not ok:
        raise PluginError(plugin, "Selector.select", f"returned {type(picked).__name__}; a list of row positions (ints)")
    if len(picked) != want or len(set(picked)) != len(picked) or any(not 0 <= i < n for i in picked):
        raise PluginError(plugin, "Selector.select", f"returned {len(picked)} positions ({len(set(picked))} distinct, "
                          f"{sum(1 for i in picked if not 0 <= i < n)} out of range); {want} distinct positions in "
                          f"0..{n - 1} were asked for")


def train_round(ctx, folder, options: ActiveOptions, produced: dict[str, Any]) -> dict[str, Any]:
    """Train a round's student with the distill stage, in ``folder/distill``, on the labeled rows
    and ``produced['annotations']`` (when given); its metrics."""
    distill = ctx.hooks.catalogue.get("stage", "distill")
    own = {**produced}
    sources = [{"input": "round.annotations"}] if "annotations" in produced else []
    if options.labeled:
        own["labeled"] = ctx.input(options.labeled)
        sources.append({"input": "round.labeled", "weight": options.labeled_weight})
    if ctx.has_input("dev"):
        own["dev"] = ctx.input("dev")
    stage_dir = folder / "distill"
    resuming = stage_dir.exists()
    stage_dir.mkdir(parents=True, exist_ok=True)
    sub = dataclasses.replace(ctx, name=f"{ctx.name}/{folder.name}", dir=stage_dir, resuming=resuming,
                              produced={"round": own}, input_map={})
    result = distill.run(sub, distill.options({**options.distill, "sources": sources}))
    return dict(result.metrics)


def evaluate_folder(ctx, folder) -> dict[str, Any]:
    """Dev metrics of an earlier student (``start_student``), for round 0's record."""
    return evaluate_student(folder, ctx.load_dataset("dev"), ctx.domain)


def round_record(r: int, chosen: list[int], cold: bool, annotations, trained: dict[str, Any], domain,
                 seconds: float) -> dict[str, Any]:
    """What a round did: the pool positions sent, what came back, the student's dev figures."""
    metrics: dict[str, Any] = {k: v for k, v in trained.items()  # calibrated students: also the held-out half's figures
                               if k.startswith(("dev_", "calibration_heldout_macro_f1")) and "reasoning_view" not in k
                               and isinstance(v, (int, float))}
    metrics["train_rows"] = trained.get("train_rows")
    if annotations is not None and len(annotations):
        labels = annotations["label"]
        metrics["parse_rate"] = round(sum(annotations["parse_ok"]) / len(annotations), 4)
        for i, name in enumerate(domain.labels):
            metrics[f"selected_share_{name.replace(' ', '_')}"] = round(sum(1 for x in labels if x == i) / len(labels), 4)
        gold = [g for g in annotations["gold_label"] if isinstance(g, int) and g >= 0]
        for i, name in enumerate(domain.labels):  # what was picked, by the hidden gold labels where the pool has them
            if gold:
                metrics[f"selected_gold_share_{name.replace(' ', '_')}"] = round(sum(1 for g in gold if g == i) / len(gold), 4)
    metrics["seconds"] = round(seconds, 1)
    return {"round": r, "selected": chosen, "cold_start": cold, "metrics": metrics}


@hookimpl
def register_stages(register):
    register(ActiveStage())
