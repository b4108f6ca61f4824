"""Export a trained student to ONNX, fuse it with onnxruntime's transformer optimizer, quantize to int8.

Uses torch's dynamo exporter (the TorchScript exporter mis-traces transformers' attention-mask code
and gives logits off by ~0.04 here). The fused graph is optional: architectures the optimizer does
not know are exported plain.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from .predictor import length_buckets, render_items, student_meta

log = logging.getLogger("reasondistill")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_onnx(model_dir: str | Path, out_dir: str | Path, quantize: bool = True, optimize: bool = True,
                network: Any = None) -> dict[str, str]:
    """Write ``model.onnx`` (fp32) and, with ``quantize``, ``model.int8.onnx``, plus the tokenizer.

    ``network``: a :class:`~reasondistill.components.StudentNetwork` to trace through its
    ``forward_view`` (a student with its own head); default: the folder's sequence classifier.

    :return: ``{"fp32": path, "int8": path}`` (relative file names inside ``out_dir``).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if network is None:
        model = AutoModelForSequenceClassification.from_pretrained(  # runtime: ONNX traces the fp32 CPU model
            model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    else:
        model = _standard_view(network.to(device="cpu", dtype=torch.float32).eval())  # runtime: as above
    sample = tok(["a query", "another query here"], ["an item title", "a longer item title for the example"],
                 return_tensors="pt", padding=True)
    names = [k for k in INPUTS if k in sample]
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=model.config.max_position_embeddings)
    raw = out / "model.raw.onnx"
    program = torch.onnx.export(model, (), kwargs={k: sample[k] for k in names}, input_names=names, output_names=["logits"],
                                dynamic_shapes={k: {0: batch, 1: seq} for k in names}, opset_version=18, dynamo=True,
                                verbose=False)
    program.save(str(raw))
    fp32 = out / "model.onnx"
    if optimize and _optimize(raw, fp32, model.config):
        raw.unlink()
    else:
        raw.rename(fp32)
    files = {"fp32": fp32.name}
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8)
        files["int8"] = "model.int8.onnx"
    tok.save_pretrained(out)
    for extra in ("config.json", "reasondistill.json"):
        if (model_dir / extra).exists():
            shutil.copy(model_dir / extra, out / extra)
    for leftover in out.glob("*.onnx.data"):
        log.debug("external data kept: %s", leftover)
    return files


def _standard_view(network: Any) -> Any:
    """``network.forward_view``'s logits as a module ONNX can trace (inputs by keyword)."""
    import torch

    class StandardView(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.config = net, net.model.config

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.net.forward_view(input_ids, attention_mask, token_type_ids)[0]

    return StandardView(network).eval()


def _optimize(src: Path, dst: Path, config: Any) -> bool:
    """Fuse attention/LayerNorm/GELU for BERT-like encoders; False when not applicable."""
    model_type = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}.get(
        getattr(config, "model_type", ""))
    if model_type is None:
        return False
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(src), model_type=model_type, num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size)
        opt.save_model_to_file(str(dst))
        return True
    except Exception as exc:  # the plain export still serves
        log.warning("onnxruntime transformer optimizer skipped: %s", exc)
        return False


class OnnxPredictor:
    """onnxruntime predictor with the same bucketing and padding as the torch ``Predictor``."""

    def __init__(self, onnx_dir: str | Path, variant: str = "int8", batch_size: int = 64, threads: int | None = None,
                 max_length: int | None = None, spin: bool = True):
        """``spin=False``: idle onnxruntime threads sleep instead of spinning (a server, whose event
        loop needs the cores between batches)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(onnx_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        file = folder / ("model.int8.onnx" if variant == "int8" else "model.onnx")
        self.session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.meta = student_meta(folder)
        self.max_length = max_length or self.meta.get("max_length", 128)
        self.batch_size = batch_size

    def predict_proba(self, queries: list[str], items: list[str]):
        import numpy as np

        enc = self.tokenizer(queries, items, truncation="longest_first", max_length=self.max_length)
        out = None
        for idx in length_buckets([len(x) for x in enc["input_ids"]], self.batch_size):
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in self.input_names}, return_tensors="np")
            logits = self.session.run(None, {k: batch[k].astype(np.int64) for k in self.input_names})[0]
            if out is None:
                out = np.zeros((len(queries), logits.shape[-1]), dtype=np.float32)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            out[idx] = e / e.sum(-1, keepdims=True)
        return out

    def predict(self, rows, domain=None) -> list[int]:
        queries, items = render_items(rows, domain)
        return self.predict_proba(queries, items).argmax(-1).tolist()
