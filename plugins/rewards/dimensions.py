"""Built-in reward dimensions, one scorer plugin each (entry points ``reward_*``).

All scores lie in [0, 1], higher is better, and no scorer raises on malformed text.
"""

from __future__ import annotations

import re

from reasondistill import hookimpl

_WORD = re.compile(r"[\w$.:-]+", re.UNICODE)
STOP = set("""a an the and or but if then so of to in on at for with by from as is are was were be been being it its
this that these those there their they them he she we you i not no yes does do did can could should would may might
will shall has have had which who whom what when where why how than too very also only just about into over under
more most less least some any all each both either neither one two query item product service label reasoning
relevant irrelevant partly user search result results match matches matching asks asked wants offers""".split())


def _content_words(text: str) -> list[str]:
    return [w.strip(".:,;").lower() for w in _WORD.findall(text)
            if len(w.strip(".:,;")) > 2 and w.strip(".:,;").lower() not in STOP]


class LabelAgreement:
    """``label_agreement``: 1 for the gold label, else 0.

    No partial credit for a neighbouring grade: with it, always answering the middle grade earns
    at least half the reward, and DPO learned exactly that (measured on the quickstart).
    """

    @hookimpl
    def reward_dimensions(self):
        return ["label_agreement"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        gold = example.get("label")
        if gold is None or gold < 0:
            return None
        parsed = domain.parse_completion(completion)
        return {"label_agreement": float(parsed.ok and parsed.label == gold)}


class FormatScore:
    """``format``: reasoning and a label in the schema, one ``Label:`` line, nothing after it."""

    @hookimpl
    def reward_dimensions(self):
        return ["format"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        text = completion or ""
        parsed = domain.parse_completion(text)
        if not parsed.ok:
            return {"format": 0.0}
        score = 0.5 + 0.25 * bool(parsed.reasoning)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        label_lines = [line for line in lines if re.match(rf"(?i)\s*\**\s*{re.escape(domain.label_key)}", line)]
        score += 0.25 * (len(label_lines) == 1 and bool(lines) and lines[-1] == label_lines[0])
        return {"format": score}


class Faithfulness:
    """``faithfulness``: the share of content words in the reasoning found in the query or item."""

    @hookimpl
    def reward_dimensions(self):
        return ["faithfulness"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        reasoning = domain.parse_completion(completion or "").reasoning
        claims = _content_words(reasoning)
        if not claims:
            return {"faithfulness": 0.0}
        source = set(_content_words(domain.query_text(example) + " " + domain.item_text(example)))
        return {"faithfulness": sum(w in source for w in claims) / len(claims)}


class ClaimCheck:
    """``claims``: the share of the reasoning's checkable claims about the pair that hold.

    The domain checks them (:meth:`Domain.check_claims`); abstains where it cannot. Faithfulness
    alone let DPO on Home Depot learn to drop the chain's "Not in the title" list (every word
    of a wrong list is still in the pair's text), and the answers collapsed onto one label.
    """

    @hookimpl
    def reward_dimensions(self):
        return ["claims"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        score = domain.check_claims(example, domain.parse_completion(completion or "").reasoning)
        return None if score is None else {"claims": float(score)}


class SelfConsistency:
    """``self_consistency``: a label named inside the reasoning agrees with the final label."""

    @hookimpl
    def reward_dimensions(self):
        return ["self_consistency"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        parsed = domain.parse_completion(completion or "")
        if not parsed.ok:
            return {"self_consistency": 0.0}
        text = parsed.reasoning.lower()
        named = set()
        for i, name in sorted(enumerate(domain.labels), key=lambda x: -len(x[1])):
            if re.search(rf"\b{re.escape(name.lower())}\b", text):
                named.add(i)
                text = re.sub(rf"\b{re.escape(name.lower())}\b", " ", text)
        if not named:
            return {"self_consistency": 0.5}
        return {"self_consistency": 1.0 if named == {parsed.label} else 0.0}


class LengthScore:
    """``length``: 1 for 8-60 words of reasoning, falling off linearly outside."""

    low, high = 8, 60

    @hookimpl
    def reward_dimensions(self):
        return ["length"]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        words = len(domain.parse_completion(completion or "").reasoning.split())
        if words < self.low:
            return {"length": words / self.low}
        if words > self.high:
            return {"length": max(0.0, 1 - (words - self.high) / self.high)}
        return {"length": 1.0}


label_agreement = LabelAgreement()
format_score = FormatScore()
faithfulness = Faithfulness()
claims = ClaimCheck()
self_consistency = SelfConsistency()
length = LengthScore()
