"""Generic product search (query vs product title), e.g. ``../shared/data/homedepot``."""

from __future__ import annotations

import re

from reasondistill import Domain, hookimpl

_WORD = re.compile(r"[a-z0-9]+(?:[./-][a-z0-9]+)*")


def _stem(word: str) -> str:
    return word.rstrip("s") if len(word) > 3 else word


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower())]


def lexical_rationale(query: str, item: str, label: int | None = None, labels: tuple[str, ...] = ()) -> str:
    """A rule-written reasoning chain from term overlap (a stand-in until a teacher has annotated).

    With ``label`` it ends in that conclusion, as a rationalized teacher chain does (STaR style).
    """
    t = set(_terms(item))
    words = _WORD.findall(query.lower())  # named as the shopper wrote them, matched by their stem
    found, missing = [], []
    for w in words:
        (found if _stem(w) in t else missing).append(w)
    parts = [f"Query terms in the title: {', '.join(found) or 'none'}."]
    if missing:
        parts.append(f"Not in the title: {', '.join(missing)}.")
    parts.append(f"The product is: {item.split(' with ')[0][:80]}.")
    if label is not None and labels:
        parts.append(f"So the product is {labels[label]} to the query.")
    return " ".join(parts)


# a list runs to its sentence's end (terms hold dots only inside, as in "2.5")
_IN_TITLE = re.compile(r"Query terms in the title:(.*?)(?:\.(?:\s|$)|\n|$)")
_NOT_IN_TITLE = re.compile(r"Not in the title:(.*?)(?:\.(?:\s|$)|\n|$)")


def _claimed(pattern: re.Pattern, reasoning: str) -> set[str] | None:
    """The terms the chain's list ``pattern`` names (``none`` is empty); None when it has no such list."""
    found = pattern.findall(reasoning)
    if not found:
        return None
    return {t for part in found for t in _terms(part) if t != "none"}


def overlap_claims_accuracy(query: str, item: str, reasoning: str) -> float | None:
    """How truly a chain in :func:`lexical_rationale`'s format sorts the query's terms.

    Each query term counts once and is right when it sits in the list that matches the title
    (found terms in "Query terms in the title", the rest in "Not in the title"; an omitted list
    claims nothing). Terms named that are not in the query count against the chain. A chain with
    neither list scores 0: dropping the overlap is no escape from checking it. None for a query
    without terms.
    """
    terms = list(dict.fromkeys(_terms(query)))
    if not terms:
        return None
    title = set(_terms(item))
    found, missing = _claimed(_IN_TITLE, reasoning), _claimed(_NOT_IN_TITLE, reasoning)
    if found is None and missing is None:
        return 0.0
    found, missing = found or set(), missing or set()
    right = sum((t in title) == (t in found) != (t in missing) for t in terms)
    return right / (len(terms) + len((found | missing) - set(terms)))


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

    def check_claims(self, row, reasoning: str) -> float | None:
        return overlap_claims_accuracy(self.query_text(row), str(row["item"]), reasoning)


@hookimpl
def register_domains(register):
    register(ProductSearch())
