"""Every declared limit of every option, at its boundary: the value equal to the limit is accepted
(``ge``/``le``, ``min_length``/``max_length``) or refused (``gt``/``lt``) as docs/options.md says,
and the nearest value past it is refused, with the error on that option.

The limits are read from the pydantic models themselves, so an option added with a bound is
checked without a test of its own; limits enforced at run time (queue sizes, retries, deadlines)
have their boundary tests beside the code that enforces them (docs/testing.md lists them).
"""

from __future__ import annotations

import math
from typing import Any

import annotated_types as at
import pytest
from pydantic import BaseModel, ValidationError

from .test_docs import _option_models

BOUNDS = (at.Ge, at.Gt, at.Le, at.Lt)
LENGTHS = (at.MinLen, at.MaxLen)


def _limits() -> list[tuple[str, type[BaseModel], str, Any]]:
    found = []
    for where, cls in _option_models():
        for field, info in cls.model_fields.items():
            for limit in info.metadata:
                if isinstance(limit, BOUNDS + LENGTHS):
                    found.append((f"{where}.{field}", cls, info.alias or field, limit))
    return found


LIMITS = _limits()


def _field_errors(cls: type[BaseModel], field: str, value: Any) -> list[dict]:
    """The validation errors located on ``field`` when only it is given (others may be missing)."""
    try:
        cls.model_validate({field: value})
    except ValidationError as exc:
        return [e for e in exc.errors() if e["loc"][:1] == (field,)]
    return []


def _takes_ints_only(cls: type[BaseModel], field: str, near: float) -> bool:
    return any(e["type"] == "int_from_float" for e in _field_errors(cls, field, near + 0.5))


def _at_and_past(cls: type[BaseModel], field: str, limit: Any) -> tuple[Any, Any, bool]:
    """(the value equal to the limit, the nearest value past it, whether the limit is accepted)."""
    if isinstance(limit, LENGTHS):
        n = limit.min_length if isinstance(limit, at.MinLen) else limit.max_length
        sample = _sample_item(cls, field)
        past = n - 1 if isinstance(limit, at.MinLen) else n + 1
        return sample * n, sample * past, True
    bound = next(getattr(limit, a) for a in ("ge", "gt", "le", "lt") if hasattr(limit, a))
    downward = isinstance(limit, (at.Ge, at.Gt))  # the refused side lies below the bound
    if _takes_ints_only(cls, field, bound):
        past = bound - 1 if downward else bound + 1
    else:
        past = math.nextafter(bound, -math.inf if downward else math.inf)
    return bound, past, isinstance(limit, (at.Ge, at.Le))


#: a list of one valid item, for the list options whose items are not plain values
SAMPLES = {("Recipe", "stages"): [{"uses": "pairs"}]}


def _sample_item(cls: type[BaseModel], field: str) -> Any:
    """One item of the field's kind (a string of one character, or a list of one valid item)."""
    if (cls.__name__, field) in SAMPLES:
        return SAMPLES[cls.__name__, field]
    for candidate in ("a", ["a"], [0.5], [1]):
        if not any(e["type"] not in ("too_short", "too_long", "string_too_short", "string_too_long")
                   for e in _field_errors(cls, field, candidate)):
            return candidate
    pytest.fail(f"{cls.__name__}.{field}: no sample value its limit can be checked with")


def test_the_limits_are_found():
    """The walk finds the bounds of the core and of the plugins (so an empty walk cannot pass)."""
    names = {name for name, *_ in LIMITS}
    assert len(LIMITS) > 60, len(LIMITS)
    assert {"reasondistill.score_server.ServeOptions.max_queue",
            "reasondistill.plugins.student.distill_stage.DistillOptions.epochs"} <= names, sorted(names)[:20]


@pytest.mark.parametrize(("name", "cls", "field", "limit"), LIMITS, ids=[f"{n.rsplit('.', 2)[-2]}.{n.rsplit('.', 1)[-1]}-{type(lim).__name__}"
                                                                       for n, _, _, lim in LIMITS])
def test_every_limit_at_its_boundary(name, cls, field, limit):
    at_limit, past, accepted = _at_and_past(cls, field, limit)
    errors = _field_errors(cls, field, at_limit)
    if accepted:
        assert not errors, f"{name}: the limit itself ({at_limit!r}) is documented as allowed, got {errors}"
    else:
        assert errors, f"{name}: the limit itself ({at_limit!r}) is documented as refused, but was accepted"
    assert _field_errors(cls, field, past), f"{name}: {past!r}, past the limit {limit}, was accepted"


def test_every_run_time_limit_names_a_test_that_exists():
    """docs/testing.md's table of run-time limits names, for each, tests that exist."""
    import re
    from pathlib import Path

    root = Path(__file__).parent
    text = (root.parent / "docs" / "testing.md").read_text(encoding="utf-8")
    table = text.split("## Limits at their boundary", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+)::(test_\w+)`|, `(test_\w+)`", table)
    assert len(named) >= 18
    module = None
    for mod, test, more in named:
        module = mod or module
        source = (root / f"{module}.py").read_text(encoding="utf-8")
        assert re.search(rf"def {test or more}\b", source), f"docs/testing.md names {module}::{test or more}"
