"""``teacher_eval``: measure the current teacher on gold dev pairs (zero-shot or after any stage)."""

from __future__ import annotations

from pydantic import Field

from reasondistill import BackendSpec, Stage, StageResult, hookimpl
from reasondistill.generators import teacher_roles
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.teacher.evaluation import dev_rows, evaluate_teacher, preflight_rewards


class TeacherEvalOptions(ParseHealthOptions):
    rows: int = Field(300, ge=1, description="dev pairs to answer")
    max_new_tokens: int = Field(96, ge=4, description="token budget of one answer")
    batch_size: int = Field(32, ge=1, description="dev pairs decoded together")
    backend: BackendSpec | None = Field(None, description="how the teacher runs (default: the recipe's "
                                                          "backends.teacher, else transformers)")


class TeacherEvalStage(Stage):
    name = "teacher_eval"
    description = "Parse rate, accuracy, macro-F1 and mean reward per dimension of the current teacher."
    Options = TeacherEvalOptions
    generates = True

    def model_roles(self, recipe, options: TeacherEvalOptions, catalogue) -> tuple[str, ...]:
        """The teacher, where it runs here rather than on a server."""
        return teacher_roles(recipe, options.backend, catalogue)

    def preflight(self, check, options: TeacherEvalOptions) -> None:
        """The reward scorers it will call, dry-called on the run's rows."""
        preflight_rewards(check)

    def run(self, ctx, options: TeacherEvalOptions) -> StageResult:
        rows = dev_rows(ctx, options.rows)
        metrics = evaluate_teacher(ctx, rows, options.max_new_tokens, options.batch_size,
                                   answers_to=ctx.dir / "answers", backend=options.backend)
        if metrics:  # the answers are saved first: a stop keeps them to read
            from datasets import load_from_disk

            answers = load_from_disk(str(ctx.dir / "answers"))
            monitor = ParseMonitor("teacher_eval", options, options.max_new_tokens,
                                   f"The answers are kept in {ctx.dir / 'answers'} to read")
            monitor.add([label >= 0 for label in answers["label"]], answers["new_tokens"])
            monitor.check()
        outputs = {"answers": "answers"} if metrics else {}
        return StageResult(outputs=outputs, metrics={"rows": len(rows), **metrics})


@hookimpl
def register_teacher_stages(register):
    register(TeacherEvalStage())
