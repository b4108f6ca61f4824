"""Every built-in reward scorer against values worked out by hand on chosen completions."""

from __future__ import annotations

import pytest

from reasondistill.plugins.domains.local_services import LocalServices
from reasondistill.plugins.rewards.dimensions import (
    ClaimCheck,
    Faithfulness,
    FormatScore,
    LabelAgreement,
    LengthScore,
    SelfConsistency,
    _content_words,
)

DOM = LocalServices()  # labels: irrelevant, partly relevant, relevant
ROW = {"pair_id": "p", "query": "cheap nail salon in Harbor", "item": "Golden House: nail salon", "district": "Harbor",
       "price": "$$$", "hours": "10:00-24:00", "label": 2}


def score(scorer, completion, row=ROW):
    return scorer.score_reasoning(row, completion, DOM)


def test_label_agreement_is_one_for_the_gold_label_only():
    s = LabelAgreement()
    assert score(s, "Reasoning: fine.\nLabel: relevant") == {"label_agreement": 1.0}
    assert score(s, "Reasoning: fine.\nLabel: partly relevant") == {"label_agreement": 0.0}  # no partial credit
    assert score(s, "no label at all") == {"label_agreement": 0.0}
    assert score(s, "Label: relevant", {**ROW, "label": -1}) is None  # abstains without gold
    assert score(s, "Label: relevant", {k: v for k, v in ROW.items() if k != "label"}) is None


@pytest.mark.parametrize("completion, expected", [
    ("Reasoning: it is a nail salon.\nLabel: relevant", 1.0),           # 0.5 parsed + 0.25 reasoning + 0.25 one final label line
    ("Label: relevant", 0.75),                                          # no reasoning
    ("Reasoning: a salon.\nLabel: relevant\nThanks!", 0.75),             # text after the label line
    ("Reasoning: a salon.\nLabel: irrelevant\nLabel: relevant", 0.75),   # two label lines (the last one wins)
    ("Label: relevant\nReasoning: a salon.\nLabel: relevant", 0.75),     # two label lines, the same text
    ("Reasoning: a salon.\n\n  Label: relevant  \n\n", 1.0),            # blank lines and spaces do not count
    ("Reasoning: a salon.\nLabel: maybe", 0.0),                          # no valid label
    ("", 0.0),
    (None, 0.0),
])
def test_format_hand_computed(completion, expected):
    assert score(FormatScore(), completion) == {"format": pytest.approx(expected)}


def test_content_words_drop_short_words_and_stop_words():
    assert _content_words("The salon is in Harbor, and it is cheap.") == ["salon", "harbor", "cheap"]
    assert _content_words("a an of to") == []
    assert _content_words("Spa spa:") == ["spa", "spa"]
    assert _content_words("TV on 4K mount") == ["mount"]  # two letters are too short to count, three are enough


def test_faithfulness_is_the_share_of_content_words_found_in_the_pair():
    f = Faithfulness()
    # content words: nail, salon, harbor, cheap, downtown -> 4 of 5 in query/item text ("downtown" is not)
    out = score(f, "Reasoning: nail salon in Harbor, cheap, not downtown.\nLabel: relevant")
    assert out == {"faithfulness": pytest.approx(4 / 5)}
    assert score(f, "Reasoning: the and of.\nLabel: relevant") == {"faithfulness": 0.0}  # no content word
    assert score(f, None) == {"faithfulness": 0.0}


def test_claims_asks_the_domain_and_abstains_where_it_cannot_check():
    class Checking(LocalServices):
        def check_claims(self, row, reasoning):
            return 0.25 if "salon" in reasoning else None

    dom = Checking()
    assert ClaimCheck().score_reasoning(ROW, "Reasoning: a salon.\nLabel: relevant", dom) == {"claims": 0.25}
    assert ClaimCheck().score_reasoning(ROW, "Reasoning: a shop.\nLabel: relevant", dom) is None
    assert score(ClaimCheck(), "Reasoning: a salon.\nLabel: relevant") is None  # local_services checks nothing


@pytest.mark.parametrize("completion, expected", [
    ("Reasoning: so it is relevant.\nLabel: relevant", 1.0),
    ("Reasoning: so it is irrelevant.\nLabel: relevant", 0.0),
    # "partly relevant" is matched before "relevant" (longest first), so it names one label, not two
    ("Reasoning: it is partly relevant.\nLabel: partly relevant", 1.0),
    ("Reasoning: relevant or irrelevant?\nLabel: relevant", 0.0),       # names two labels
    ("Reasoning: a nail salon in Harbor.\nLabel: relevant", 0.5),       # names none
    ("Reasoning: it is relevant.", 0.0),                                # no final label
    (None, 0.0),
])
def test_self_consistency_hand_computed(completion, expected):
    assert score(SelfConsistency(), completion) == {"self_consistency": expected}


@pytest.mark.parametrize("words, expected", [(0, 0.0), (4, 0.5), (8, 1.0), (30, 1.0), (60, 1.0), (61, 59 / 60),
                                             (90, 0.5), (120, 0.0), (200, 0.0)])
def test_length_hand_computed(words, expected):
    completion = "Reasoning: " + " ".join(["word"] * words) + "\nLabel: relevant"
    assert score(LengthScore(), completion) == {"length": pytest.approx(expected)}
    assert score(LengthScore(), None) == {"length": 0.0}


def test_every_scorer_answers_through_the_plugin_manager(rd_engine):
    """What the stages call: the hook, not the classes. A scorer whose ``score_reasoning`` lost its
    ``@hookimpl`` (or whose plugin is not registered) would silently drop its dimension."""
    from reasondistill.plugins.domains.product_search import ProductSearch

    hooks = rd_engine.hooks
    dom = ProductSearch()
    row = {"pair_id": "p", "query": "angle bracket", "item": "Simpson Strong-Tie 12-Gauge Angle", "label": 2}
    completion = ("Reasoning: Query terms in the title: angle. Not in the title: bracket. "
                  "So the product is relevant to the query.\nLabel: relevant")
    vec = hooks.score_reasoning(row, completion, dom)
    assert set(vec) == {"label_agreement", "format", "faithfulness", "claims", "self_consistency", "length"}
    assert vec["label_agreement"] == 1.0 and vec["format"] == 1.0 and vec["self_consistency"] == 1.0
    assert vec["claims"] == 1.0 and vec["length"] == 1.0
    # content words: terms, title, angle, title, bracket -> angle and bracket are in the pair: 2 of 5
    assert vec["faithfulness"] == pytest.approx(2 / 5)


def test_a_reward_score_is_accepted_on_the_bounds_of_zero_to_one_and_refused_just_outside():
    """The boundary values themselves (0.0, 1.0) are scores; -0.5 and 1.5 name the plugin."""
    from reasondistill.errors import PluginError
    from reasondistill.reward_scores import checked_score

    assert checked_score("p", "d", 0.0) == 0.0 and checked_score("p", "d", 1.0) == 1.0
    for bad in (-0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(PluginError, match="plugin 'p'"):
            checked_score("p", "d", bad)
