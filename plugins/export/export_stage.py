"""The ``export`` stage: the hub-ready student package (weights, tokenizer, ONNX fp32 + int8, lineage,
model card), with label agreement and latency of each ONNX variant against torch fp32."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from reasondistill import Options, Stage, StageResult, hookimpl
from reasondistill.onnx_export import OnnxPredictor
from reasondistill.predictor import render_items
from reasondistill.student_io import read_trained_outputs
from reasondistill.student_package import finish_package, start_package, student_component


class ExportOptions(Options):
    quantize: bool = Field(True, description="also write a dynamically quantized int8 model")
    optimize: bool = Field(True, description="fuse with onnxruntime's transformer optimizer")
    agreement_rows: int = Field(500, ge=0, description="dev rows to check label agreement on")


class ExportStage(Stage):
    name = "export"
    description = "Export the student to ONNX (fp32, int8) and check label agreement with torch."
    Options = ExportOptions

    def run(self, ctx, options: ExportOptions) -> StageResult:
        student = ctx.input("student")
        component = student_component(student, ctx.hooks)  # the student that trained it exports it
        onnx_dir = start_package(student, ctx.dir / "model")
        files = component.export_onnx(student, onnx_dir, quantize=options.quantize, optimize=options.optimize)
        metrics = {}
        trained = read_trained_outputs(student)
        if options.agreement_rows and (trained or ctx.has_input("dev")):
            torch_pred = component.predictor(student)  # the saved student: its latency (and labels for old folders)
            if trained:  # held to the network as it was trained, not to a reload of what save wrote
                queries, items = trained["queries"][:options.agreement_rows], trained["items"][:options.agreement_rows]
                ref = np.asarray(trained["probs"][:options.agreement_rows]).argmax(-1)
            else:
                dev = ctx.load_dataset("dev")
                queries, items = render_items(list(dev.select(range(min(options.agreement_rows, len(dev))))), ctx.domain)
                ref = torch_pred.predict_proba(queries, items).argmax(-1)
            metrics["latency_ms_student_torch"] = median_ms(torch_pred, queries, items)
            for variant in files:
                pred = OnnxPredictor(onnx_dir, variant)
                got = pred.predict_proba(queries, items).argmax(-1)
                metrics[f"agreement_{variant}"] = round(float((got == ref).mean()), 4)
                metrics[f"latency_ms_student_onnx_{variant}"] = median_ms(pred, queries, items)
        finish_package(ctx.run.dir, ctx.dir / "model", metrics, student)
        return StageResult(outputs={"model": "model", "onnx": "model/onnx"}, metrics=metrics)


def median_ms(predictor, queries, items, n: int = 50) -> float:
    """Median batch-1 latency in milliseconds over the first ``n`` pairs (after 3 warm-up calls)."""
    import statistics
    import time

    n = min(n, len(queries))
    for i in range(min(3, n)):
        predictor.predict_proba([queries[i]], [items[i]])
    times = []
    for i in range(n):
        t = time.perf_counter()
        predictor.predict_proba([queries[i]], [items[i]])
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3) if times else float("nan")


@hookimpl
def register_stages(register):
    register(ExportStage())
