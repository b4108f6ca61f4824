"""Domains: rendering and the tolerant completion parser (fuzzed)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from reasondistill.plugins.domains.local_services import LocalServices
from reasondistill.plugins.domains.product_search import ProductSearch

DOM = LocalServices()


def test_roundtrip_each_label():
    for i in range(3):
        parsed = DOM.parse_completion(DOM.format_completion("because reasons", i))
        assert parsed.label == i and parsed.reasoning == "because reasons" and parsed.ok


def test_tolerant_parsing():
    cases = {
        "Reasoning: x\nlabel:   RELEVANT  ": 2,
        "reasoning: x\n**Label**: partly-relevant.": 1,
        "Label: relevant\nthen again...\nLabel: irrelevant": 0,
        "Label: 1": 1,
        "Label: kind of": None,
        "": None,
        "no label at all": None,
    }
    for text, want in cases.items():
        assert DOM.parse_completion(text).label == want, text


def test_render_item_fields_and_messages():
    row = {"query": "cheap pizza", "item": "Blue Door Place: pizza", "district": "Harbor", "price": "$", "hours": "10:00-21:00"}
    assert DOM.item_text(row) == "Blue Door Place: pizza; district: Harbor; price: $; hours: 10:00-21:00"
    msgs = DOM.messages(row)
    assert msgs[0]["role"] == "system" and "partly relevant" in msgs[0]["content"]
    assert "cheap pizza" in msgs[1]["content"]
    assert "correct label is 'relevant'" in DOM.rationalize_prompt(row, 2)[-1]["content"]
    assert ProductSearch().item_text({"query": "q", "item": "Drill"}) == "Drill"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                 st.builds(lambda a, b: f"{a}\nLabel: {b}", st.text(), st.text())))
def test_parser_never_raises_and_label_in_schema(text):
    parsed = DOM.parse_completion(text)
    assert parsed.label is None or parsed.label in range(len(DOM.labels))
    assert isinstance(parsed.reasoning, str)


def test_parser_non_string():
    assert DOM.parse_completion(None).label is None


def test_chinese_web_search_domain():
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    dom = WebSearchZh()
    text = dom.format_completion("标题回答了查询", 1)
    assert text == "理由：标题回答了查询\n标签：部分相关"
    assert dom.parse_completion(text).label == 1
    assert dom.parse_completion("理由：无关\n标签: 不相关").label == 0
    assert dom.parse_completion("标签：相关").label == 2
    assert "部分相关" in dom.system_prompt() and "查询：" in dom.user_prompt({"query": "手机", "item": "国产手机排行榜"})
    assert "手机" in dom.rationale({"query": "国产手机", "item": "国产手机排行榜"}, 2)


def test_qbqtc_loads_and_renders(tmp_path):
    from pathlib import Path

    import pytest

    from reasondistill.data import load_pairs
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "qbqtc" / "dev.jsonl"
    if not path.exists():
        pytest.skip("../shared/data/qbqtc is not beside this checkout")
    ds, _ = load_pairs(path, limit=50, num_labels=3)
    dom = WebSearchZh()
    row = ds[0]
    assert row["query"] in dom.user_prompt(row) and dom.rationale(row, row["label"]).endswith("。")


def test_strip_verdict_drops_only_sentences_that_name_a_label():
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    dom = ProductSearch()
    chain = dom.rationale({"query": "80,000 btu heater", "item": "ProCom 80,000 BTU Kerosene Heater"}, 2)
    assert chain.endswith("So the product is relevant to the query.")
    hidden = dom.strip_verdict(chain)
    assert hidden == chain[: chain.index(" So the product")] and "80,000" in hidden
    assert dom.strip_verdict("Sizes match.\nIt is PARTLY RELEVANT!") == "Sizes match."
    assert dom.strip_verdict("No label named here. None at all") == "No label named here. None at all"
    assert dom.strip_verdict("") == ""
    zh = WebSearchZh()
    assert zh.strip_verdict(zh.rationale({"query": "北京天气", "item": "北京天气预报"}, 0)) == "查询与标题共有的词：京天、北京、天气。"


def test_relabel_changes_only_the_verdict():
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    dom = ProductSearch()
    text = "Reasoning: Not irrelevant: the size fits. So the product is relevant to the query.\nLabel: relevant"
    assert dom.relabel(text, 1) == ("Reasoning: Not irrelevant: the size fits. So the product is partly relevant "
                                    "to the query.\nLabel: partly relevant")
    assert dom.parse_completion(dom.relabel(text, 0)).label == 0
    assert dom.relabel("no label here", 1) is None
    zh = WebSearchZh()
    assert zh.relabel(zh.format_completion("因此网页与查询相关。", 2), 0) == "理由：因此网页与查询不相关。\n标签：不相关"


def test_product_search_checks_the_overlap_a_chain_claims():
    dom = ProductSearch()
    row = {"query": "chalk paint brush", "item": "Whisper Chalky Finish Paint Brush"}
    assert dom.check_claims(row, dom.rationale(row, 2)) == 1.0  # the rule-written chain is true
    wrong = "Query terms in the title: chalk, paint, brush. The product is: Whisper."  # chalk is not there
    assert dom.check_claims(row, wrong) == 2 / 3
    swapped = "Query terms in the title: chalk. Not in the title: paint, brush."
    assert dom.check_claims(row, swapped) == 0.0
    both = "Query terms in the title: paint, brush. Not in the title: chalk, paint."  # paint named twice
    assert dom.check_claims(row, both) == 2 / 3
    partial = "Query terms in the title: paint."  # right about paint; chalk and brush unaccounted for
    assert dom.check_claims(row, partial) == 1 / 3
    invented = "Query terms in the title: paint, brush, roller. Not in the title: chalk."
    assert dom.check_claims(row, invented) == 3 / 4
    assert dom.check_claims(row, "A fine brush for chalk paint.") == 0.0, "no overlap stated: nothing to credit"
    assert dom.check_claims({"query": "??", "item": "Drill"}, "anything") is None
    assert DOM.check_claims({"query": "pizza", "item": "Blue Door: pizza"}, "pizza") is None, "default: can't check"


def test_web_search_zh_checks_the_shared_words_a_chain_claims():
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    zh, row = WebSearchZh(), {"query": "北京天气预报", "item": "北京天气_中国天气网"}
    assert zh.check_claims(row, zh.rationale(row, 2)) == 1.0
    assert zh.check_claims(row, "查询与标题共有的词：上海、天气。") == 0.5
    assert zh.check_claims(row, "查询与标题共有的词：无。") == 0.0
    assert zh.check_claims({"query": "苹果", "item": "香蕉"}, "查询与标题共有的词：无。") == 1.0
    assert zh.check_claims(row, "相关") == 0.0


def test_domain_options_reach_the_domain(rd_engine, register_plugin):
    """``domain_options`` are validated with the domain's Options and handed to it (they used to be
    hashed and never passed); the registered instance keeps its defaults."""
    from datasets import load_from_disk

    from reasondistill import Domain, Recipe, hookimpl, step
    from reasondistill import Options as OptionsBase

    class Towns(Domain):
        name = "towns"

        class Options(OptionsBase):
            city: str = "Lyon"

        def generate(self, n, seed, noise=0.05):
            return [{"query": f"plumber {self.settings.city} {i}", "item": f"shop {i}", "label": i % 3} for i in range(n)]

    class P:
        @hookimpl
        def register_domains(self, register):
            register(Towns())

    register_plugin(P(), "towns")
    recipe = Recipe(name="t", domain="towns", domain_options={"city": "Paris"}, stages=[step("pairs", n=20)])
    out = rd_engine.run(recipe)["pairs"]
    rows = load_from_disk(str(rd_engine.runs_dir / "t" / "pairs" / out.outputs["pairs"]))
    assert len(rows) > 5 and all(q.startswith("plumber Paris ") for q in rows["query"])
    assert rd_engine.hooks.catalogue.get("domain", "towns").settings.city == "Lyon"


def test_teacher_prompt_short_reaches_every_teacher_prompt(rd_engine):
    """``teacher_prompt: short`` swaps the system prompt of the SFT rows (and of every other
    teacher prompt, all built by ``Domain.messages``); the default keeps the full one."""
    from datasets import load_from_disk

    from reasondistill import Recipe, step

    systems = {}
    for style in ("full", "short"):
        recipe = Recipe(name=f"p-{style}", teacher_prompt=style, stages=[step("pairs", n=20), step("reasoning", source="column")])
        out = rd_engine.run(recipe)["reasoning"]
        rows = load_from_disk(str(rd_engine.runs_dir / recipe.name / "reasoning" / out.outputs["sft_data"]))
        systems[style] = {r[0]["content"] for r in rows["prompt"]}
    assert systems["short"] == {DOM.task}
    assert systems["full"] == {DOM.system_prompt()} and "partly relevant" in DOM.system_prompt()


def test_configured_prompt_style_leaves_the_registered_domain_alone():
    import pytest

    short = DOM.configured(DOM.settings, "short")
    row = {"query": "q", "item": "i"}
    assert short.messages(row)[0]["content"] == DOM.task and short.messages(row)[1] == DOM.messages(row)[1]
    assert DOM.prompt_style == "full" and DOM.messages(row)[0]["content"] == DOM.system_prompt()
    assert short.rationalize_prompt(row, 1)[0]["content"] == DOM.task
    with pytest.raises(ValueError, match="prompt_style"):
        DOM.configured(DOM.settings, "tiny")


def _svc(category="pizza", district="Harbor", price="$", opens=10, closes=21):
    return {"category": category, "district": district, "price": price, "opens": opens, "closes": closes}


def _query(category="pizza", district="", price="", hours=""):
    return {"category": category, "district": district, "price": price, "hours": hours}


def test_the_local_services_rule_grade_by_grade():
    """The documented rule on hand-made pairs: same category, 0 / 1 / 2+ failed constraints give
    2 / 1 / 0; a related category 1 or 0; another family 0. A constraint the query does not state
    is not checked, and the hour bounds are inclusive (late: closes at 23 or later; early: opens at
    8 or earlier; all day: 0-24)."""
    from reasondistill.plugins.domains.local_services import _grade

    assert _grade(_query(), _svc())[0] == 2
    assert _grade(_query(district="Harbor"), _svc())[0] == 2
    assert _grade(_query(district="Airport"), _svc())[0] == 1
    assert _grade(_query(district="Airport", price="$$"), _svc())[0] == 0
    assert _grade(_query(district="Airport", price="$$", hours="late"), _svc())[0] == 0
    assert _grade(_query(category="pasta"), _svc())[0] == 1  # related: the same family
    assert _grade(_query(category="pasta", price="$$"), _svc())[0] == 0
    assert _grade(_query(category="sushi"), _svc())[0] == 0  # another family
    for hours, opens, closes, ok in [("late", 10, 23, True), ("late", 10, 22, False), ("early", 8, 15, True),
                                     ("early", 9, 15, False), ("allday", 0, 24, True), ("allday", 0, 23, False),
                                     ("allday", 1, 24, False)]:
        grade, why = _grade(_query(hours=hours), _svc(opens=opens, closes=closes))
        assert grade == (2 if ok else 1), (hours, opens, closes)
        assert ("(matches)" if ok else "(does not match)") in why
    assert "Constraints" not in _grade(_query(), _svc())[1], "no constraint stated, none explained"


def test_the_generator_sizes_and_noise():
    """``n // 6`` distinct queries (at least 10) unless ``queries`` says; without noise every label
    is the rule's, with noise 1 every label moves one step (clamped to the scale)."""
    from reasondistill.plugins.domains.local_services import generate_pairs

    assert len({r["pair_id"] for r in generate_pairs(n=120, seed=0)}) == 120
    def rule(why: str) -> int:  # the grade the rationale explains
        fails = why.count("(does not match)")
        if "different kind" in why:
            return 0
        if "related" in why:
            return 1 if not fails else 0
        return max(0, 2 - fails)

    clean = generate_pairs(n=300, seed=5, noise=0.0)
    assert all(r["label"] == rule(r["rationale"]) for r in clean)
    moved = [(rule(r["rationale"]), r["label"]) for r in generate_pairs(n=300, seed=5, noise=1.0)]
    assert all(abs(x - y) == 1 or (x == y and x in (0, 2)) for x, y in moved)
    assert {y for _, y in moved} <= {0, 1, 2} and sum(x != y for x, y in moved) > 150


def test_query_counts_follow_n():
    """The rows cycle through ``max(10, n // 6)`` queries (or ``queries``): row i and row i + that
    many ask the same query."""
    from reasondistill.plugins.domains.local_services import generate_pairs

    for n, queries, cycle in ((30, None, 10), (120, None, 20), (600, None, 100), (100, 7, 7)):
        rows = generate_pairs(n=n, seed=1, queries=queries)
        assert all(rows[i]["query"] == rows[i + cycle]["query"] for i in range(n - cycle)), (n, queries)
        assert len({r["query"] for r in rows[:cycle]}) > cycle // 2


def test_relabel_replaces_the_longest_label_name_first():
    """A domain whose label names share a prefix ("good", "good enough"): the whole name is replaced."""

    class Graded(LocalServices):
        name = "graded"
        labels = ("bad", "good enough", "good")

    dom = Graded()
    text = dom.format_completion("It is good enough for the query.", 1)
    assert dom.relabel(text, 0) == dom.format_completion("It is bad for the query.", 0)


def test_web_search_zh_rationale_names_six_shared_words_at_most():
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    zh = WebSearchZh()
    row = {"query": "一二三四五六七八九", "item": "一二三四五六七八九十"}  # 8 shared two-character words
    words = zh.rationale(row).split("：", 1)[1].rstrip("。").split("、")
    assert len(words) == 6 and words == sorted(words)


def test_generated_data_is_the_same_from_version_to_version():
    """A seed names one data set: recipes, docs and benchmarks quote results on ``source: generate``
    data, so a change that draws the random stream differently is a change users see."""
    import hashlib
    import json

    from reasondistill.plugins.domains.local_services import generate_pairs

    def digest(**kw):
        return hashlib.sha256(json.dumps(generate_pairs(n=60, seed=0, **kw)).encode()).hexdigest()[:16]

    assert (digest(noise=0.0), digest()) == ("7751dbe3b8097aae", "24b74778ca1c075e")
    assert generate_pairs(n=30) == generate_pairs(n=30, seed=0), "seed 0 by default"


def test_the_recipe_domain_is_known_only_with_both_the_catalogue_and_the_recipe(rd_hooks):
    """Options validated outside a recipe (a stage's options built directly) skip the domain
    checks instead of failing on a half context."""
    from types import SimpleNamespace

    from reasondistill.domain import recipe_domain

    recipe = SimpleNamespace(domain="local_services")
    assert recipe_domain({"catalogue": rd_hooks.catalogue, "recipe": recipe}).name == "local_services"
    assert recipe_domain({"catalogue": None, "recipe": recipe}) is None
    assert recipe_domain({"catalogue": rd_hooks.catalogue}) is None
    assert recipe_domain(None) is None
    assert recipe_domain({"catalogue": rd_hooks.catalogue, "recipe": SimpleNamespace(domain="nowhere")}) is None


def test_what_a_domain_can_do_follows_the_methods_it_overrides():
    """``can_generate`` / ``writes_rationale`` are properties read from the class: a domain without
    a generator (the data-file domains) says so, and validation can refuse ``source: generate``."""
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    assert LocalServices().can_generate is True and ProductSearch().can_generate is False
    assert WebSearchZh().can_generate is False and ProductSearch().writes_rationale is True


def test_claims_match_plural_words_and_zh_counts_two_character_words_only():
    """"bags" in a query matches "Bag" in a title (words over 3 letters lose a plural s; "gas"
    keeps its s); in Chinese, sharing one character is not sharing a word."""
    from reasondistill.plugins.domains.web_search_zh import WebSearchZh

    dom = ProductSearch()
    row = {"query": "tool bags", "item": "Husky Tool Bag"}
    assert dom.check_claims(row, "Query terms in the title: tool, bags.") == 1.0
    assert dom.check_claims({"query": "gas can", "item": "Ga Can"},
                            "Query terms in the title: can. Not in the title: gas.") == 1.0
    zh = WebSearchZh()
    assert zh.check_claims({"query": "北京", "item": "京都"}, "查询与标题共有的词：无。") == 1.0


def test_a_missing_ability_names_the_fix(rd_engine):
    from reasondistill import Recipe, RecipeError, step

    recipe = Recipe(name="nogen", domain="product_search", stages=[step("pairs", source="generate")])
    try:
        rd_engine.validate(recipe)
    except RecipeError as exc:
        assert "has no generator" in str(exc) and "give a file or folder" in str(exc)
    else:
        raise AssertionError("source: generate accepted for a domain without a generator")
