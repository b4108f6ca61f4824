"""Built-in selectors for the ``active`` stage: which pool rows the teacher labels next.

``uncertainty`` ranks rows by how unsure the current student is (margin between its two most
likely labels, entropy, or one minus its top probability) and caps the rows per query, so one
query with many near-duplicate items cannot take the round's budget; optionally it takes the labels
the student predicts in turn, so a rare class gets its share; ``random`` is the baseline
at the same budget. Ties are broken by a seeded permutation, so a round is reproducible.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field

from reasondistill import Options, Selector, hookimpl


class UncertaintyOptions(Options):
    measure: Literal["margin", "entropy", "least_confident"] = Field(
        "margin", description="how unsure the student is of a row: the gap between its two most likely labels "
        "(smallest first), the entropy of its label distribution (largest first), or 1 - its top probability")
    max_per_query: int | None = Field(
        2, ge=1, description="the diversity guard: at most this many rows of one query per round (rows past it "
        "are taken only when the pool has too few other queries to fill the budget); null = no cap")
    query_column: str = Field("query", description="the column whose value counts as one query for the guard")
    spread_over_predicted: bool = Field(
        False, description="take the least sure rows of each label the student predicts in turn, so a class the "
        "pool rarely shows gets its share of the budget (macro-F1 is decided by that class); a label that runs "
        "out of rows leaves its turns to the others", json_schema_extra={"hash": "unless_default"})


def uncertainty(probabilities: np.ndarray, measure: str) -> np.ndarray:
    """How unsure the student is of each row; larger is less sure, whatever the measure."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    if measure == "entropy":
        return -(p * np.log(p)).sum(-1)
    if measure == "least_confident":
        return 1.0 - p.max(-1)
    top2 = np.sort(p, axis=-1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def in_turns(queues: list[np.ndarray]) -> np.ndarray:
    """The first of each queue, then the second of each, ...; a queue that runs out drops out."""
    ranked = [(rank, q, int(i)) for q, queue in enumerate(queues) for rank, i in enumerate(queue)]
    return np.array([i for _, _, i in sorted(ranked)], dtype=np.int64)


class UncertaintySelector(Selector):
    name = "uncertainty"
    description = "The rows the student is least sure of (margin, entropy or top probability), capped per query."
    Options = UncertaintyOptions

    def select(self, rows: list[dict[str, Any]], probabilities: Any, k: int, seed: int,
               options: UncertaintyOptions) -> list[int]:
        score = uncertainty(probabilities, options.measure)
        tiebreak = np.random.default_rng(seed).permutation(len(rows))
        order = np.lexsort((tiebreak, -score))  # least sure first; equal scores in seeded order
        if options.spread_over_predicted:
            predicted = np.asarray(probabilities).argmax(-1)[order]
            order = in_turns([order[predicted == label] for label in np.unique(predicted)])
        want = min(k, len(rows))
        if options.max_per_query is None:
            return [int(i) for i in order[:want]]
        taken: list[int] = []
        per_query: Counter = Counter()
        for i in order:
            key = str(rows[i].get(options.query_column))
            if per_query[key] < options.max_per_query:
                per_query[key] += 1
                taken.append(int(i))
                if len(taken) == want:
                    return taken
        chosen = set(taken)  # the guard left the budget unfilled: the next least sure rows fill it
        return taken + [int(i) for i in order if int(i) not in chosen][:want - len(taken)]


class RandomSelector(Selector):
    name = "random"
    description = "Rows drawn at random (seeded): the baseline at the same teacher budget."
    needs_probabilities = False

    def select(self, rows: list[dict[str, Any]], probabilities: Any, k: int, seed: int, options: Any) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(i) for i in rng.choice(len(rows), size=min(k, len(rows)), replace=False)]


@hookimpl
def register_selectors(register):
    register(UncertaintySelector())
    register(RandomSelector())
