"""An inline plugin whose stages count their runs (used by engine tests)."""

from __future__ import annotations

from collections import Counter

from pydantic import Field

from reasondistill import Options, Stage, StageResult, hookimpl

CALLS: Counter = Counter()


class CountOptions(Options):
    value: int = 0
    fail_at: int | None = Field(None, description="raise after writing this many parts (simulates a cut)")


class CountingStage(Stage):
    name = "count"
    description = "writes one file per part; resumable"
    Options = CountOptions

    def run(self, ctx, options):
        CALLS[ctx.name] += 1
        parts = ctx.dir / "parts"
        parts.mkdir(exist_ok=True)
        done = len(list(parts.iterdir()))
        CALLS[f"{ctx.name}:resumed_at_{done}"] += int(ctx.resuming)
        for i in range(done, 3):
            if options.fail_at is not None and i == options.fail_at and not ctx.resuming:
                raise KeyboardInterrupt("cut off")
            upstream = ""
            if ctx.has_input("result"):
                upstream = ctx.input("result").read_text()
            (parts / f"{i}.txt").write_text(f"{options.value}:{upstream}")
        (ctx.dir / "result.txt").write_text(f"{ctx.name}={options.value}")
        return StageResult(outputs={"result": "result.txt"}, metrics={"value": options.value})


class DrawStage(Stage):
    name = "draw"
    description = "records the seed it ran under and one draw from Python's RNG after seeding"
    Options = Options

    def run(self, ctx, options):
        import random

        CALLS[ctx.name] += 1
        (ctx.dir / "draw.txt").write_text(str(random.random()))
        return StageResult(outputs={"result": "draw.txt"}, metrics={"seed": ctx.seed})


class CountingPlugin:
    @hookimpl
    def register_stages(self, register):
        register(CountingStage())
        register(DrawStage())
