"""A search domain: how a pair becomes a teacher prompt and a student input, and the label scale.

Reusing reasondistill for another search domain means writing one ``Domain`` subclass in a
plugin; nothing else forks.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .components import Component, Options


@dataclass(frozen=True)
class Parsed:
    """A teacher completion split into its parts. ``label`` is None when no valid label was found."""

    reasoning: str
    label: int | None

    @property
    def ok(self) -> bool:
        return self.label is not None


class Domain(Component):
    """Renders pairs for the teacher and the student and parses the teacher's answers.

    The completion format is ``Reasoning: <text>\\nLabel: <label name>``; override
    :meth:`format_completion` and :meth:`parse_completion` together to change it.
    """

    kind = "domain"
    labels: ClassVar[tuple[str, ...]] = ("irrelevant", "partly relevant", "relevant")
    label_descriptions: ClassVar[tuple[str, ...]] = (
        "the item does not serve the query",
        "the item serves the query only in part",
        "the item serves the query",
    )
    task: ClassVar[str] = "Judge how relevant a search result is to a user's query."
    item_noun: ClassVar[str] = "item"
    reasoning_key: ClassVar[str] = "Reasoning"
    label_key: ClassVar[str] = "Label"
    #: extra columns rendered into the item text, in order (e.g. district, price band)
    item_fields: ClassVar[tuple[str, ...]] = ()

    class Options(Options):
        """The recipe's ``domain_options`` (validated before any work; unknown keys are errors)."""

    # --- options ------------------------------------------------------------------------------
    @property
    def settings(self) -> Options:
        """This domain's validated ``domain_options`` (defaults until :meth:`configured`)."""
        return self.__dict__.get("_settings") or self.Options()

    @property
    def prompt_style(self) -> str:
        """``full`` or ``short``: the system prompt :meth:`messages` writes (the recipe's ``teacher_prompt``)."""
        return self.__dict__.get("_prompt_style", "full")

    def configured(self, settings: Options, prompt_style: str = "full") -> Domain:
        """A copy of this domain that reads ``settings`` and prompts the teacher in ``prompt_style``:
        the engine hands every stage this copy, so the registered instance is never changed by one
        recipe's options."""
        if prompt_style not in ("full", "short"):
            raise ValueError(f"prompt_style must be 'full' or 'short', got {prompt_style!r}")
        dom = copy.copy(self)
        dom.__dict__["_settings"] = settings
        dom.__dict__["_prompt_style"] = prompt_style
        return dom

    # --- optional abilities -------------------------------------------------------------------
    # Override these to offer them; the engine asks :attr:`can_generate` / :attr:`writes_rationale`
    # (an unimplemented ability is a validation error naming the option that needs it).
    def generate(self, n: int, seed: int, noise: float = 0.05) -> list[dict[str, Any]]:
        """Synthetic pairs for ``pairs`` with ``source: generate``: ``n`` rows of ``query``, ``item``,
        ``label`` (an index into :attr:`labels`) and the :attr:`item_fields` columns, the same for the
        same ``seed``; ``noise`` is the share of labels flipped at random."""
        raise NotImplementedError(f"domain {self.name!r} has no generator")

    def rationale(self, row: Mapping[str, Any], label: int | None = None) -> str:
        """A rule-written reasoning chain for ``row`` ending at ``label`` (without the label line):
        used by ``reasoning`` with ``source: domain`` and by ``distill`` with ``domain_rationale``."""
        raise NotImplementedError(f"domain {self.name!r} writes no rationale")

    @property
    def can_generate(self) -> bool:
        return type(self).generate is not Domain.generate

    @property
    def writes_rationale(self) -> bool:
        return type(self).rationale is not Domain.rationale

    # --- rendering ----------------------------------------------------------------------------
    def query_text(self, row: Mapping[str, Any]) -> str:
        return str(row["query"])

    def item_text(self, row: Mapping[str, Any]) -> str:
        """The item as the student sees it: its text plus the domain's extra fields."""
        extras = [f"{f}: {row[f]}" for f in self.item_fields if row.get(f) not in (None, "")]
        return "; ".join([str(row["item"]), *extras])

    def system_prompt(self) -> str:
        scale = "\n".join(f"- {n}: {d}" for n, d in zip(self.labels, self.label_descriptions))
        return (
            f"{self.task} Think step by step about what the query asks for and what the "
            f"{self.item_noun} offers, then give one label.\nLabels:\n{scale}\n"
            f"Answer exactly as:\n{self.reasoning_key}: <one or two sentences>\n"
            f"{self.label_key}: <label>"
        )

    def short_system_prompt(self) -> str:
        """The system prompt of a teacher that has learnt the answer format (``teacher_prompt:
        short``): the task in one line. The full prompt is more than half of each SFT row (90 of
        ~155 prompt tokens on Home Depot with SmolLM2), and every teacher step pays for it."""
        return self.task

    def user_prompt(self, row: Mapping[str, Any]) -> str:
        return f"Query: {self.query_text(row)}\n{self.item_noun.capitalize()}: {self.item_text(row)}"

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages for the teacher (system + user); the assistant turn is the completion."""
        system = self.short_system_prompt() if self.prompt_style == "short" else self.system_prompt()
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": self.user_prompt(row)},
        ]

    def rationalize_prompt(self, row: Mapping[str, Any], label: int) -> list[dict[str, str]]:
        """STaR-style rationalization: ask the teacher to explain a known gold label."""
        hint = f"(The correct label is '{self.labels[label]}'. Explain why, then give it.)"
        msgs = self.messages(row)
        msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + "\n" + hint}
        return msgs

    # --- completions --------------------------------------------------------------------------
    def format_completion(self, reasoning: str, label: int) -> str:
        return f"{self.reasoning_key}: {reasoning.strip()}\n{self.label_key}: {self.labels[label]}"

    def label_from_text(self, text: str) -> int | None:
        """Map a label string to its index, ignoring case, whitespace and punctuation."""
        norm = _norm(text)
        by_name = {_norm(n): i for i, n in enumerate(self.labels)}
        if norm in by_name:
            return by_name[norm]
        if norm.isascii() and norm.isdigit() and int(norm) < len(self.labels):
            return int(norm)
        return None

    def parse_completion(self, text: str) -> Parsed:
        """Split free text into reasoning and label. Never raises; label is None when absent.

        The *last* ``Label:`` line wins (the model's conclusion); the reasoning is what precedes
        it, without its ``Reasoning:`` prefix.
        """
        if not isinstance(text, str):
            return Parsed("", None)
        text = text.replace("\x00", "")
        pattern = re.compile(rf"(?im)^\s*\**\s*{re.escape(self.label_key)}\s*\**\s*[:：]\s*(.*)$")
        matches = list(pattern.finditer(text))
        label, reasoning = None, text
        if matches:
            last = matches[-1]
            label = self.label_from_text(last.group(1))
            reasoning = text[: last.start()]
        reasoning = re.sub(rf"(?i)^\s*{re.escape(self.reasoning_key)}\s*[:：]\s*", "", reasoning.strip())
        return Parsed(reasoning.strip(), label)

    def relabel(self, completion: str, label: int) -> str | None:
        """``completion`` re-rendered with the conclusion ``label``: the label line and each mention
        of the old label in the reasoning change, nothing else. None when it states no label.

        Used for label-contrast preference pairs, whose two answers differ only in the verdict.
        """
        parsed = self.parse_completion(completion)
        if not parsed.ok:
            return None
        old, new = self.labels[parsed.label].lower(), self.labels[label]
        names = re.compile("|".join(re.escape(n) for n in sorted(self.labels, key=len, reverse=True)), re.I)
        reasoning = names.sub(lambda m: new if m.group(0).lower() == old else m.group(0), parsed.reasoning)
        return self.format_completion(reasoning, label)

    def check_claims(self, row: Mapping[str, Any], reasoning: str) -> float | None:
        """The share of the reasoning's checkable claims about the pair that hold, in [0, 1].

        Scored as the ``claims`` reward dimension. Word-level faithfulness cannot catch a chain that
        names query words as missing from the item when they are there (every word is still in the
        pair's text); a domain that knows its chains' structure can. ``None`` (the default) where
        this domain cannot check its reasoning, e.g. free-form chains; the dimension then abstains.
        """
        return None

    def strip_verdict(self, reasoning: str) -> str:
        """The reasoning without its sentences that name a label (the chain's conclusion).

        A reasoning view that states the answer teaches the student to copy it; without the verdict
        the view has to be read for its analysis. Override where a domain marks its conclusion
        differently.
        """
        names = [n.lower() for n in self.labels]
        pieces = _SENTENCE.findall(reasoning or "")
        return "".join(p for p in pieces if not any(n in p.lower() for n in names)).strip()


def recipe_domain(context: dict | None) -> Domain | None:
    """The recipe's domain during options validation (``info.context``), or None outside a recipe.

    For option validators that depend on what the domain can do (``source: generate`` needs
    :attr:`Domain.can_generate`), so the mistake fails in ``validate``, not after earlier stages ran.
    """
    context = context or {}
    catalogue, recipe = context.get("catalogue"), context.get("recipe")
    if catalogue is None or recipe is None:
        return None
    entry = catalogue.kind("domain").get(recipe.domain)
    return entry.component if entry is not None else None


ABILITIES = {"can_generate": "has no generator (Domain.generate)",
             "writes_rationale": "writes no rationale (Domain.rationale)"}


def require_ability(context: dict | None, ability: str, fix: str) -> None:
    """In an option validator: the recipe's domain must have ``ability`` (a key of
    :data:`ABILITIES`), else a ``ValueError`` that pydantic reports under the option's path."""
    domain = recipe_domain(context)
    if domain is not None and not getattr(domain, ability):
        raise ValueError(f"domain {domain.name!r} {ABILITIES[ability]}{'; ' + fix if fix else ''}")


_SENTENCE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？\n]+|$)\s*")


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", str(text)).strip().lower()
