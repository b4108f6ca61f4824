"""The stage hash (reasondistill.stage_hash): what reruns a stage, and what must never."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from reasondistill import NestedOptions, Options, Recipe, step
from reasondistill.generators import BackendSpec
from reasondistill.recipe import resolve
from reasondistill.stage_hash import options_view, shared_settings, stage_hash, stage_options_view

#: a fixed recipe whose stage hashes are pinned below: a change here means every user's cached
#: stages recompute; if that is meant, say so in the changelog and update the values
PINNED = Recipe(name="pinned", models={"teacher": "tiny-causal-lm", "student": "tiny-encoder"}, stages=[
    step("pairs", source="generate", limit=40),
    step("annotate", annotator_options={"max_new_tokens": 24, "backend": {
        "uses": "openai", "options": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout": 5.0}}}),
    step("distill", loss="kd", student_options={"max_length": 64}, loss_options={"temperature": 3.0}, epochs=1),
])


#: computed by the hash rule before it moved into stage_hash and before nested options were typed
PINNED_HASHES = {"pairs": "16a4dc623dd5b8f9a690ae33c307ae241621954f820f141ada8b35077b7d274e",
                 "annotate": "760d0d16036a6f86ddc1a8b05151bb1ad91b6db4f6f7d0342c68961acd188701",
                 "distill": "81b143d96cb9c30025d9f9d9e830da78b54cbe47f15fff153dbad2131275209f"}


def _hashes(recipe: Recipe, catalogue: Any) -> dict[str, str]:
    previous, out = "", {}
    for stage in resolve(recipe, catalogue):
        previous = out[stage.name] = stage_hash(recipe, stage, previous, {}, catalogue)
    return out


def test_the_stage_hashes_of_a_fixed_recipe_do_not_move(rd_hooks):
    """Pinned: a refactor of the hash rule, or an option added without ``hash: unless_default``,
    would silently recompute every cached stage of every user."""
    assert _hashes(PINNED, rd_hooks.catalogue) == PINNED_HASHES


def test_transport_settings_of_a_nested_backend_leave_the_hash_alone(rd_hooks):
    moved = PINNED.model_copy(deep=True)
    backend = moved.stages[1].options["annotator_options"]["backend"]["options"]
    backend.update(base_url="http://10.0.0.2:8000/v1", timeout=60.0)  # where and how long: not what
    assert _hashes(moved, rd_hooks.catalogue) == _hashes(PINNED, rd_hooks.catalogue)
    other = PINNED.model_copy(deep=True)
    other.stages[1].options["annotator_options"]["backend"]["options"]["model"] = "another-model"
    assert _hashes(other, rd_hooks.catalogue)["annotate"] != _hashes(PINNED, rd_hooks.catalogue)["annotate"]


def test_settings_added_later_enter_the_hash_only_away_from_their_default(rd_hooks):
    stages = resolve(PINNED, rd_hooks.catalogue)
    plain = shared_settings(PINNED, stages[0], rd_hooks.catalogue)
    assert "teacher_prompt" not in plain and "runtime" not in plain and "backends" not in plain
    short = PINNED.model_copy(update={"teacher_prompt": "short"})
    assert shared_settings(short, stages[0], rd_hooks.catalogue)["teacher_prompt"] == "short"
    fixed = PINNED.model_copy(update={"runtime": PINNED.runtime.model_copy(update={"dtype": "float32"})})
    assert shared_settings(fixed, stages[0], rd_hooks.catalogue)["runtime"] == {"dtype": "float32"}
    served = PINNED.model_copy(update={"backends": {"teacher": BackendSpec(uses="transformers")}})
    assert "backends" not in shared_settings(served, stages[0], rd_hooks.catalogue)  # pairs does not generate
    assert shared_settings(served, stages[1], rd_hooks.catalogue)["backends"]["teacher"]["uses"] == "transformers"


class Inner(Options):
    url: str = Field("http://a", description="where", json_schema_extra={"hash": False})
    k: int = Field(1, description="what")
    later: int = Field(0, description="added later", json_schema_extra={"hash": "unless_default"})
    seen: list[int] = Field(default_factory=list, description="a factory default",
                            json_schema_extra={"hash": "unless_default"})


class Outer(Options):
    inner: Inner = Field(default_factory=Inner, description="an option model of this component")
    other: NestedOptions = Field(default_factory=dict, description="another component's options")
    after: int = Field(2, description="a field after the nested ones")


def test_options_view_skips_transport_and_unset_later_fields_and_keeps_other_components_as_written():
    view = options_view(Outer(inner=Inner(url="http://b", later=0), other=Inner(url="http://c")))
    assert view["inner"] == {"k": 1}, "a declared option model is viewed field by field"
    # another component's options, typed by the stage (a student's, a selector's): by their own rules,
    # so a student option added later (hash: unless_default) reruns no cached distill stage
    assert view["other"] == {"k": 1}
    assert options_view(Outer(other={"url": "http://c", "k": 1}))["other"] == {"url": "http://c", "k": 1}, "a dict: as written"
    assert view["after"] == 2, "fields after a skipped one are still viewed"
    assert options_view(Inner(later=3, seen=[1]))["later"] == 3 and options_view(Inner(seen=[1]))["seen"] == [1]


def test_a_dict_is_viewed_through_a_backend_only_when_it_is_a_backend_spec(rd_hooks):
    cat = rd_hooks.catalogue
    spec = {"uses": "openai", "options": {"base_url": "http://x/v1", "model": "m", "timeout": 9.0}}
    viewed = stage_options_view(Outer(other={"backend": spec}), cat)["other"]["backend"]
    assert viewed["uses"] == "openai" and "timeout" not in viewed["options"] and "base_url" not in viewed["options"]
    not_a_spec = {"uses": "openai", "options": {"a": 1}, "extra": True}
    assert stage_options_view(Outer(other={"x": not_a_spec}), cat)["other"]["x"] == not_a_spec
    unknown = {"uses": "no-such-backend", "options": {"timeout": 1}}
    assert stage_options_view(Outer(other={"x": [unknown]}), cat)["other"]["x"] == [unknown]


def test_the_options_outside_the_hash_are_the_documented_ones():
    """Which options never rerun a stage (``hash: False``: where and how to reach a teacher, how
    to react to a low parse rate) and which enter it only away from their default (``hash:
    unless_default``: options added after stages were cached). Moving an option between these
    sets reruns, or silently reuses, users' cached stages: it is a decision, made here."""
    from .test_docs import _option_models

    rules: dict[str, set[str]] = {}
    for where, cls in _option_models():
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            rule = extra.get("hash") if isinstance(extra, dict) else None
            if rule is not None:
                rules.setdefault(str(rule), set()).add(f"{where.rsplit('.', 1)[-1]}.{name}")
    parse = {"min_parse_rate", "on_low_parse"}
    assert rules["False"] == {f"{cls}.{opt}" for cls in ("ActiveOptions", "AnnotateOptions", "ParseHealthOptions",
                                                         "TeacherEvalOptions", "PreferenceOptions") for opt in parse} | {
        f"OpenAIBackendOptions.{opt}" for opt in ("api_key_env", "backoff", "base_url", "breaker_failures", "concurrency",
                                                  "cost_per_1m_tokens", "endpoints", "max_backoff", "max_response_bytes",
                                                  "probe_interval", "retries", "timeout", "tokenizer")}
    assert rules["unless_default"] == {"PairsOptions.encoding", "PairsOptions.label_map", "EncoderOptions.added_token_init",
                                       "UncertaintyOptions.spread_over_predicted"} | {
        f"{cls}.{opt}" for cls in ("DaptOptions", "PreferenceOptions", "SFTOptions", "TeacherTrainOptions")
        for opt in ("answer_head_only", "group_by_length")}
    assert set(rules) == {"False", "unless_default"}


def test_a_student_option_added_later_reruns_only_where_it_is_set(rd_hooks):
    """``added_token_init`` came after users had cached distill stages: at its default the pinned
    hashes hold (above); set, it reruns the distill stage."""
    moved = PINNED.model_copy(deep=True)
    moved.stages[2].options["student_options"]["added_token_init"] = "distinct"
    hashes = _hashes(moved, rd_hooks.catalogue)
    assert hashes["distill"] != PINNED_HASHES["distill"] and hashes["annotate"] == PINNED_HASHES["annotate"]
    moved.stages[2].options["student_options"]["added_token_init"] = "mean"  # written out, at its default
    assert _hashes(moved, rd_hooks.catalogue) == PINNED_HASHES
