"""Fast inference for a trained student: the standard view only, no reasoning, no LLM.

``Predictor`` tokenizes once, sorts rows by length into buckets and pads each batch only to its
own longest row (dynamic padding), then restores the input order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .runtime import current

META = "reasondistill.json"


def student_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / META
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def render_items(rows: Iterable[dict[str, Any]], domain: Any | None) -> tuple[list[str], list[str]]:
    """(queries, item texts) as the student was trained on them (the domain renders extra fields)."""
    queries, items = [], []
    for r in rows:
        queries.append(domain.query_text(r) if domain else str(r["query"]))
        items.append(domain.item_text(r) if domain else str(r["item"]))
    return queries, items


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class Predictor:
    """Torch predictor for a saved student folder, in the run's inference dtype (bf16 under
    ``dtype: fastest`` where the CPU runs it faster).

    An in-memory ``model`` (a sequence classifier, called for ``.logits``) or ``network`` (a
    :class:`~reasondistill.components.StudentNetwork`, whose ``forward_view`` gives the logits of
    whatever head it trained) is used as it is.
    """

    def __init__(self, model_dir: str | Path, batch_size: int = 64, max_length: int | None = None, model: Any = None,
                 tokenizer: Any = None, network: Any = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.meta = student_meta(model_dir) if model_dir else {}
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
        if model is None and network is None:
            runtime = current()
            model = runtime.place(AutoModelForSequenceClassification.from_pretrained(
                model_dir, **runtime.model_kwargs(inference=True)), inference=True)
        self.network = network
        self.model = model if network is None else network
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size
        self.max_length = max_length or self.meta.get("max_length", 128)
        self.labels = self.meta.get("labels")

    def logits(self, batch: dict[str, Any]) -> Any:
        if self.network is not None:
            return self.network.forward_view(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))[0]
        return self.model(**batch).logits

    def encode(self, queries: list[str], items: list[str]) -> dict[str, list]:
        return self.tokenizer(queries, items, truncation="longest_first", max_length=self.max_length)

    def predict_proba(self, queries: list[str], items: list[str]) -> np.ndarray:
        import torch

        enc = self.encode(queries, items)
        keys = list(enc.keys())
        out: np.ndarray | None = None
        with torch.inference_mode():
            for idx in length_buckets([len(x) for x in enc["input_ids"]], self.batch_size):
                batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
                logits = self.logits({k: v.to(self.device) for k, v in batch.items()})
                if out is None:
                    out = np.zeros((len(queries), logits.shape[-1]), dtype=np.float32)
                out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
        return out if out is not None else np.zeros((0, len(self.labels or ())), dtype=np.float32)

    def predict(self, rows: Sequence[dict[str, Any]], domain: Any | None = None) -> list[int]:
        """Labels for rows with ``query`` and ``item`` (and the domain's extra fields)."""
        queries, items = render_items(rows, domain)
        return self.predict_proba(queries, items).argmax(-1).tolist()
