"""The teacher's output health: stop a generating stage whose answers do not parse (issue 33).

A teacher whose answers never parse used to end ``annotate`` "done" with every row labelled -1.
Each generating stage now checks the share of parsed answers after its first shard (and every
shard after) against ``min_parse_rate``: below it the stage stops with the likely cause and keeps
what it wrote, or, with ``on_low_parse: warn``, logs once and goes on.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from reasondistill import Options
from reasondistill.errors import DataError

log = logging.getLogger("reasondistill")


class ParseHealthOptions(Options):
    """Mixed into the options of every stage that makes the teacher write; how the stage reacts,
    not what it computes, so neither enters the stage hash."""

    min_parse_rate: float = Field(0.5, ge=0, le=1, json_schema_extra={"hash": False},
                                  description="the share of the teacher's answers that must parse, checked after the "
                                              "first shard (and every one after); 0 = no check")
    on_low_parse: Literal["stop", "warn"] = Field(
        "stop", json_schema_extra={"hash": False},
        description="below min_parse_rate: 'stop' ends the stage with the likely cause (what was written is kept), "
                    "'warn' logs it once and goes on")


def likely_cause(unparsed_tokens: list[int], budget: int | None) -> str:
    """Why answers do not parse, from how long the unparsed ones ran."""
    if budget and unparsed_tokens:
        cut = sum(1 for t in unparsed_tokens if t >= budget) / len(unparsed_tokens)
        if cut >= 0.5:
            return (f"{cut:.0%} of the unparsed answers used the whole token budget (max_new_tokens {budget}): raise it, "
                    "the 'Label:' line comes last")
    return ("the answers end without a label line the domain's parser reads: check the chat template (was the "
            "teacher trained on this prompt format?), the parser (Domain.parse_completion), and the token budget")


class ParseMonitor:
    """Counts parsed answers as a stage goes, for its progress bar and its stop rule."""

    def __init__(self, stage: str, options: ParseHealthOptions, budget: int | None = None, kept: str = ""):
        """:param kept: what a stop keeps, in words (``"the shards are kept in X; rerun to resume"``)."""
        self.stage, self.options, self.budget, self.kept = stage, options, budget, kept
        self.parsed = self.answered = 0
        self.unparsed_tokens: list[int] = []
        self.warned = False

    @property
    def rate(self) -> float:
        return self.parsed / self.answered if self.answered else 1.0

    def add(self, parse_ok: list[bool], new_tokens: list[int] | None = None) -> None:
        """One shard's answers (rows that failed in the backend are left out by the caller)."""
        self.answered += len(parse_ok)
        self.parsed += sum(bool(ok) for ok in parse_ok)
        tokens = new_tokens or [0] * len(parse_ok)
        self.unparsed_tokens += [t for ok, t in zip(parse_ok, tokens) if not ok]

    def check(self) -> None:
        """Raise (or warn once) when the share parsed so far is below ``min_parse_rate``."""
        limit = self.options.min_parse_rate
        if not self.answered or self.rate >= limit:
            return
        message = (f"{self.stage}: the teacher's answers parsed in {self.parsed} of {self.answered} rows "
                   f"({self.rate:.1%}), below min_parse_rate {limit:g}. Likely cause: "
                   f"{likely_cause(self.unparsed_tokens, self.budget)}.")
        if self.options.on_low_parse == "warn":
            if not self.warned:
                log.warning("%s Going on (on_low_parse: warn).", message)
                self.warned = True
            return
        kept = f" {self.kept}." if self.kept else ""
        raise DataError(f"{message}{kept} Set on_low_parse: warn to go on anyway.")
