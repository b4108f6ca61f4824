"""One test per hook, each calling it through the facade (meta-tested in test_docs.py)."""

from pathlib import Path

import pytest

from reasondistill import (
    Annotator, DistillLoss, Domain, ModelSource, PluginError, Recipe, Stage, StageResult, Student, hookimpl, step,
)
from reasondistill.plugins.domains.local_services import LocalServices


def _names(hooks, kind):
    return set(hooks.catalogue.kind(kind))


def test_hook_register_stages(rd_hooks):
    assert {"pairs", "distill"} <= _names(rd_hooks, "stage")
    assert rd_hooks.catalogue.kind("stage")["pairs"].family == "pipeline"


def test_hook_register_teacher_stages(rd_hooks, register_plugin):
    class Noop(Stage):
        name = "noop-teacher"

        def run(self, ctx, options):
            return StageResult()

    class P:
        @hookimpl
        def register_teacher_stages(self, register):
            register(Noop())

    register_plugin(P(), "p")
    assert rd_hooks.catalogue.kind("stage")["noop-teacher"].family == "teacher"


def test_hook_score_reasoning(rd_hooks, register_plugin):
    class Len:
        @hookimpl
        def reward_dimensions(self):
            return ["short", "parsed"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return {"short": 1.0 if len(completion) < 50 else 0.0, "parsed": float(domain.parse_completion(completion).ok)}

    class Abstain:
        @hookimpl
        def reward_dimensions(self):
            return ["abstains"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return None

    register_plugin(Len(), "len")
    register_plugin(Abstain(), "abstain")
    vec = rd_hooks.score_reasoning({"query": "q", "item": "i"}, "Reasoning: ok\nLabel: relevant", LocalServices())
    assert {k: vec[k] for k in ("short", "parsed")} == {"short": 1.0, "parsed": 1.0}
    assert "abstains" not in vec

    class Sneaky:  # declares one dimension, returns another
        @hookimpl
        def reward_dimensions(self):
            return ["declared"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return {"undeclared": 0.5}

    register_plugin(Sneaky(), "sneaky")
    with pytest.raises(PluginError, match="'sneaky'.*dimension 'undeclared', which it did not declare"):
        rd_hooks.score_reasoning({}, "x", LocalServices())


def test_hook_reward_dimensions(rd_hooks, register_plugin, tmp_path):
    """Declared dimensions: clashes and undeclaring scorers fail when the catalogue is built, and a
    reward_weights key no scorer declares fails in validate, naming the field."""
    from reasondistill.cli import main

    assert rd_hooks.catalogue.scorer_of("label_agreement") == "reward_label"
    assert rd_hooks.catalogue.scorer_of("learned_format") == "reward_model"  # declared by prefix
    assert rd_hooks.catalogue.scorer_of("labl_agreement") is None

    class Clash:
        @hookimpl
        def reward_dimensions(self):
            return ["format"]

        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return {"format": 0.5}

    register_plugin(Clash(), "clash")
    with pytest.raises(PluginError, match="'clash'.*dimension 'format' is already scored by plugin 'reward_format'"):
        rd_hooks.catalogue
    rd_hooks.unregister("clash")

    class Undeclared:
        @hookimpl
        def score_reasoning(self, example, completion, domain):
            return {"x": 0.5}

    register_plugin(Undeclared(), "undeclared")
    with pytest.raises(PluginError, match="'undeclared'.*add a reward_dimensions hookimpl"):
        rd_hooks.catalogue
    rd_hooks.unregister("undeclared")

    recipe = {"name": "w", "reward_weights": {"labl_agreement": 2.0}, "stages": [{"uses": "pairs"}]}
    path = tmp_path / "w.yaml"
    path.write_text(__import__("yaml").safe_dump(recipe))
    assert main(["validate", str(path)]) == 2


def test_hook_aggregate_reward(rd_hooks, register_plugin):
    assert rd_hooks.aggregate_reward({"a": 1.0, "b": 0.0}, {"a": 3.0}) == pytest.approx(0.75)
    assert rd_hooks.aggregate_reward({}, {}) == 0.0

    class MinAgg:
        @hookimpl
        def aggregate_reward(self, scores, weights):
            return min(scores.values())

    register_plugin(MinAgg(), "min")
    assert rd_hooks.aggregate_reward({"a": 1.0, "b": 0.2}, {}) == pytest.approx(0.2)


def test_hook_register_annotators(rd_hooks, register_plugin):
    class Echo(Annotator):
        name = "echo"

        def annotate(self, ctx, pairs, teacher, options):
            return pairs

    class P:
        @hookimpl
        def register_annotators(self, register):
            register(Echo())

    register_plugin(P(), "p")
    assert "echo" in _names(rd_hooks, "annotator")


def test_hook_register_selectors(rd_engine, register_plugin, tmp_path):
    """A third-party selector picks the active stage's rows from the student's probabilities."""
    import json

    import numpy as np

    from reasondistill import Recipe, Selector, step
    from reasondistill.plugins.domains.local_services import generate_pairs

    seen = []

    class MostIrrelevant(Selector):
        name = "most-irrelevant"

        def select(self, rows, probabilities, k, seed, options):
            seen.append((len(rows), np.asarray(probabilities)))
            return np.argsort(-np.asarray(probabilities)[:, 0])[:k].tolist()

    class P:
        @hookimpl
        def register_selectors(self, register):
            register(MostIrrelevant())

    register_plugin(P(), "p")
    assert "most-irrelevant" in _names(rd_engine.hooks, "selector")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(n=200, seed=1)))
    recipe = Recipe(name="sel", models={"student": "tiny-encoder"}, seed=0, stages=[
        step("pairs", name="gold", source=str(path), limit=80, dev_fraction=0.25),
        step("pairs", name="pool", source=str(path), offset=80, limit=120, hide_labels=True, dev_fraction=0.0),
        step("active", inputs={"dev": "gold"}, input="pool.pairs", labeled="gold.pairs", rounds=1, per_round=20,
             annotator="gold", selector="most-irrelevant",
             distill={"loss": "ce", "max_steps": 5, "batch_size": 16, "student_options": {"max_length": 32}})])
    res = rd_engine.run(recipe)
    (n, probs), = seen
    assert n == 120 and probs.shape == (120, 3) and np.allclose(probs.sum(-1), 1, atol=1e-4)
    picked = json.loads((rd_engine.runs_dir / "sel" / "active" / "rounds.json").read_text())[1]["selected"]
    assert picked == np.argsort(-probs[:, 0])[:20].tolist() and res["active"].metrics["teacher_pairs"] == 20


def test_hook_register_generation_backends(rd_engine, register_plugin):
    """A third-party backend serves every stage that makes the teacher write: STaR rationalization,
    preference sampling, teacher_eval and annotation all reach it through the seam."""
    from reasondistill import Generation, GenerationBackend, Options as BaseOptions

    calls: list[tuple[int, int, bool]] = []

    class Scripted:
        identity = "scripted:v1"

        def __init__(self, domain):
            self.domain = domain

        def generate(self, messages, *, n=1, do_sample=False, temperature=1.0, top_p=1.0, seed=None, stop=None,
                     max_new_tokens=None, progress=None):
            calls.append((len(messages), n, do_sample))
            out = []
            for m in messages:
                user = m[-1]["content"]
                hint = [i for i, name in enumerate(self.domain.labels) if f"'{name}'" in user]  # STaR tells the label
                label = hint[0] if hint else len(user) % 3
                text = self.domain.format_completion(f"because {user.splitlines()[0]}", label)
                out.append([Generation(text, 5, [float(i == label) for i in range(3)]) for _ in range(n)])
            return out

    class ScriptedBackend(GenerationBackend):
        name = "scripted"
        local = False

        class Options(BaseOptions):
            flavour: str = "plain"

        def load(self, model, domain, options, *, batch_size, max_new_tokens, trust_remote_code=False):
            assert model is None, "a backend that is not local is handed no model folder"
            return Scripted(domain)

    class P:
        @hookimpl
        def register_generation_backends(self, register):
            register(ScriptedBackend())

    register_plugin(P(), "scripted_backend")
    assert rd_engine.hooks.catalogue.kind("backend")["scripted"].plugin == "scripted_backend"
    recipe = Recipe(name="seam", models={"teacher": "tiny-causal-lm"},
                    backends={"teacher": {"uses": "scripted", "options": {"flavour": "x"}}},
                    stages=[step("pairs", n=24, dev_fraction=0.25),
                            step("reasoning", source="rationalize", limit=4),
                            step("preference", prompts=2, candidates=2, max_steps=1, min_margin=0.0, lora=False,
                                 max_length=512, batch_size=2, label_flips=True),
                            step("teacher_eval", rows=3),
                            step("annotate", annotator_options={"max_new_tokens": 8, "retries": 0})])
    res = rd_engine.run(recipe)
    assert calls[0] == (4, 1, False) and res["reasoning"].metrics["rationalized"] == 4
    assert calls[1] == (2, 2, True), "preference sampled its candidates through the backend"
    assert calls[2] == (3, 1, False) and res["teacher_eval"].metrics["teacher_parse_rate"] == 1.0
    assert res["teacher_eval"].outputs == {"answers": "answers"}  # the answers it scored, to read
    from datasets import load_from_disk

    rows = load_from_disk(str(rd_engine.runs_dir / "seam" / "annotate" / "annotations")).to_list()
    dom = LocalServices()
    assert [r["label"] for r in rows] == [len(dom.user_prompt(r)) % 3 for r in rows]
    assert {r["teacher"] for r in rows} == {"scripted:v1"}
    assert all(r["label_probs"] == [float(i == r["label"]) for i in range(3)] for r in rows)


def test_hook_register_students(rd_hooks, register_plugin):
    assert "encoder-classifier" in _names(rd_hooks, "student")

    class Mine(Student):
        name = "mine"

        def tokenizer(self, model, trust_remote_code=False):
            return None

        def encode(self, tokenizer, queries, items, reasonings, options):
            return {}

        def build(self, model, num_labels, options, trust_remote_code=False, vocab_size=None):
            return None

    class P:
        @hookimpl
        def register_students(self, register):
            register(Mine())

    register_plugin(P(), "p")
    assert rd_hooks.catalogue.kind("student")["mine"].plugin == "p"

    # the contract is checked at registration: an incomplete subclass, or a look-alike, names its plugin
    class Half(Student):
        name = "half"

        def build(self, model, num_labels, options, trust_remote_code=False, vocab_size=None):
            return None

    class LookAlike:
        kind, name = "student", "look-alike"

    for bad, message in ((Half, "abstract methods encode, tokenizer"), (LookAlike, "not a reasondistill.Student")):
        class Q:
            @hookimpl
            def register_students(self, register, bad=bad):
                register(bad())

        register_plugin(Q(), "bad_student")
        with pytest.raises(PluginError, match=f"'bad_student'.*{message}"):
            rd_hooks.catalogue
        rd_hooks.unregister("bad_student")


def test_hook_register_distill_losses(rd_hooks, register_plugin):
    assert {"crsd", "ce", "kd"} <= _names(rd_hooks, "loss")

    class Zero(DistillLoss):
        name = "zero"

        def compute(self, student, batch, options):
            return {"loss": 0.0}

    class P:
        @hookimpl
        def register_distill_losses(self, register):
            register(Zero())

    register_plugin(P(), "p")
    assert "zero" in _names(rd_hooks, "loss")


def test_hook_register_domains(rd_hooks, register_plugin):
    class Recipes(Domain):
        name = "recipes"
        labels = ("bad", "good")
        label_descriptions = ("not the dish asked for", "the dish asked for")

    class P:
        @hookimpl
        def register_domains(self, register):
            register(Recipes())

    register_plugin(P(), "p")
    dom = rd_hooks.catalogue.get("domain", "recipes")
    assert dom.parse_completion("Label: good").label == 1


def test_register_mistakes_name_the_plugin(rd_hooks, register_plugin):
    """Mistakes that used to pass silently: two labels with the base class's three descriptions
    (the prompt lost a label's meaning), Options that ignore unknown keys, components returned
    from a register hook instead of registered (they vanished)."""
    from pydantic import BaseModel

    class TwoLabels(Domain):
        name = "two"
        labels = ("bad", "good")

    class LooseOptions(BaseModel):
        x: int = 1

    class Loose(Domain):
        name = "loose"
        Options = LooseOptions

    cases = [(lambda register: register(TwoLabels()), "'two': 3 label_descriptions for 2 labels"),
             (lambda register: register(Loose()), "'loose': its Options must subclass reasondistill.Options"),
             (lambda register: [TwoLabels()], "returned list; call register\\(component\\)")]
    for body, message in cases:
        class P:
            @hookimpl
            def register_domains(self, register, body=body):
                return body(register)

        register_plugin(P(), "careless")
        with pytest.raises(PluginError, match=f"'careless' failed in hook 'register_domains': {message}"):
            rd_hooks.catalogue
        rd_hooks.unregister("careless")


def test_hook_register_models(rd_hooks, register_plugin, tmp_path):
    from reasondistill.model_refs import resolve_model

    class Folder(ModelSource):
        name = "my-folder"

        def materialize(self, cache_dir):
            (cache_dir / "x").mkdir(exist_ok=True)
            return cache_dir / "x"

    class P:
        @hookimpl
        def register_models(self, register):
            register(Folder())

    register_plugin(P(), "p")
    assert Path(resolve_model("my-folder", rd_hooks)).name == "x"
    assert resolve_model(str(tmp_path), rd_hooks) == str(tmp_path)


def test_hook_on_stage_end(rd_engine, register_plugin):
    seen = []

    class Tracker:
        @hookimpl
        def on_stage_end(self, run, stage, result):
            seen.append((run.name, stage, result.skipped, result.metrics.get("pairs")))

    register_plugin(Tracker(), "tracker")
    recipe = Recipe(name="lc", stages=[step("pairs", n=40)])
    rd_engine.run(recipe)
    rd_engine.run(recipe)
    assert [s[:3] for s in seen] == [("lc", "pairs", False), ("lc", "pairs", True)]
    assert seen[0][3] == seen[1][3] > 0
