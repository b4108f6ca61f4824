"""Generic product search (query vs product title), e.g. ``../shared/data/homedepot``."""

from __future__ import annotations

import re

from reasondistill import Domain, hookimpl

_WORD = re.compile(r"[a-z0-9]+(?:[./-][a-z0-9]+)*")


def _terms(text: str) -> list[str]:
    return [w.rstrip("s") if len(w) > 3 else w for w in _WORD.findall(text.lower())]


def lexical_rationale(query: str, item: str, label: int | None = None, labels: tuple[str, ...] = ()) -> str:
    """A rule-written reasoning chain from term overlap (a stand-in until a teacher has annotated).

    With ``label`` it ends in that conclusion, as a rationalized teacher chain does (STaR style).
    """
    q, t = _terms(query), set(_terms(item))
    found = [w for w in q if w in t]
    missing = [w for w in q if w not in t]
    parts = [f"Query terms in the title: {', '.join(found) or 'none'}."]
    if missing:
        parts.append(f"Not in the title: {', '.join(missing)}.")
    parts.append(f"The product is: {item.split(' with ')[0][:80]}.")
    if label is not None and labels:
        parts.append(f"So the product is {labels[label]} to the query.")
    return " ".join(parts)


class ProductSearch(Domain):
    """English e-commerce search: a shopper's query against a product title."""

    name = "product_search"
    description = "E-commerce product search: query vs product title (Home Depot style)."
    task = "Judge how relevant a product is to a shopper's search query."
    item_noun = "product"
    label_descriptions = (
        "the product is not what the shopper looks for",
        "the product matches part of the query (type or attribute), not all of it",
        "the product is what the shopper looks for",
    )

    def rationale(self, row, label: int | None = None) -> str:
        return lexical_rationale(str(row["query"]), str(row["item"]), label, self.labels)


@hookimpl
def register_domains(register):
    register(ProductSearch())
