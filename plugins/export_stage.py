"""The ``export`` stage: ONNX fp32 + int8 for serving, with label agreement against torch fp32."""

from __future__ import annotations

from pydantic import Field

from reasondistill import Options, Stage, StageResult, hookimpl


class ExportOptions(Options):
    quantize: bool = Field(True, description="also write a dynamically quantized int8 model")
    optimize: bool = Field(True, description="fuse with onnxruntime's transformer optimizer")
    agreement_rows: int = Field(500, ge=0, description="dev rows to check label agreement on")


class ExportStage(Stage):
    name = "export"
    description = "Export the student to ONNX (fp32, int8) and check label agreement with torch."
    Options = ExportOptions

    def run(self, ctx, options: ExportOptions) -> StageResult:
        from reasondistill.onnx_export import OnnxPredictor, export_onnx
        from reasondistill.serving import Predictor, render_items

        student = ctx.input("student")
        files = export_onnx(student, ctx.dir / "onnx", quantize=options.quantize, optimize=options.optimize)
        metrics = {}
        if options.agreement_rows and ctx.has_input("dev"):
            dev = ctx.load_dataset("dev")
            rows = list(dev.select(range(min(options.agreement_rows, len(dev)))))
            queries, items = render_items(rows, ctx.domain)
            ref = Predictor(student).predict_proba(queries, items).argmax(-1)
            for variant in files:
                got = OnnxPredictor(ctx.dir / "onnx", variant).predict_proba(queries, items).argmax(-1)
                metrics[f"agreement_{variant}"] = round(float((got == ref).mean()), 4)
        return StageResult(outputs={"onnx": "onnx"}, metrics=metrics)


@hookimpl
def register_stages(register):
    register(ExportStage())
