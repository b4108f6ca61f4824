"""``teacher_eval``: measure the current teacher on gold dev pairs (zero-shot or after any stage)."""

from __future__ import annotations

from pydantic import Field

from reasondistill import BackendSpec, Options, Stage, StageResult, hookimpl

from .teacher_common import dev_rows, evaluate_teacher


class TeacherEvalOptions(Options):
    rows: int = Field(300, ge=1, description="dev pairs to answer")
    max_new_tokens: int = Field(96, ge=4)
    batch_size: int = Field(32, ge=1)
    backend: BackendSpec | None = Field(None, description="how the teacher runs (default: the recipe's "
                                                          "backends.teacher, else transformers)")


class TeacherEvalStage(Stage):
    name = "teacher_eval"
    description = "Parse rate, accuracy, macro-F1 and mean reward per dimension of the current teacher."
    Options = TeacherEvalOptions
    generates = True

    def run(self, ctx, options: TeacherEvalOptions) -> StageResult:
        rows = dev_rows(ctx, options.rows)
        metrics = evaluate_teacher(ctx, rows, options.max_new_tokens, options.batch_size,
                                   answers_to=ctx.dir / "answers", backend=options.backend)
        outputs = {"answers": "answers"} if metrics else {}
        return StageResult(outputs=outputs, metrics={"rows": len(rows), **metrics})


@hookimpl
def register_teacher_stages(register):
    register(TeacherEvalStage())
