"""The plugin manager: entry points, allow/block lists, loud failures, third-party distributions."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reasondistill import Domain, PluginError, hookimpl
from reasondistill.cli import main
from reasondistill.manager import Hooks, build_plugin_manager

BUILTINS = {"core_stages", "local_services", "product_search", "builtin_models", "lifecycle_log",
            "student_encoder", "distill_losses", "distill_stage"}


def test_builtins_load_through_entry_points():
    pm = build_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert BUILTINS <= names


def test_allow_and_block_lists(monkeypatch):
    monkeypatch.setenv("REASONDISTILL_PLUGINS", "core_stages,local_services")
    assert {n for n, _ in build_plugin_manager().list_name_plugin()} == {"core_stages", "local_services"}
    monkeypatch.delenv("REASONDISTILL_PLUGINS")
    monkeypatch.setenv("REASONDISTILL_BLOCK_PLUGINS", "product_search")
    hooks = Hooks(build_plugin_manager())
    assert "product_search" not in hooks.catalogue.kind("domain")
    assert "local_services" in hooks.catalogue.kind("domain")


def test_misspelled_hookimpl_fails_loudly(rd_hooks):
    class Typo:
        @hookimpl
        def register_domain(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="typo.*register_domain"):
        rd_hooks.register(Typo(), "typo")
    assert not rd_hooks.pm.has_plugin("typo")


def test_wrong_hookimpl_signature_fails(rd_hooks):
    class Wrong:
        @hookimpl
        def register_domains(self, register, extra):
            pass

    with pytest.raises(PluginError, match="wrong"):
        rd_hooks.register(Wrong(), "wrong")


def test_raising_plugin_is_named(rd_hooks, register_plugin):
    class Boom:
        @hookimpl
        def register_students(self, register):
            raise RuntimeError("kaput")

    register_plugin(Boom(), "boom")
    with pytest.raises(PluginError) as exc:
        rd_hooks.catalogue
    assert exc.value.plugin == "boom" and exc.value.hook == "register_students" and "kaput" in str(exc.value)


def test_duplicate_component_names_the_both_plugins(rd_hooks, register_plugin):
    class Again(Domain):
        name = "local_services"

    class Dup:
        @hookimpl
        def register_domains(self, register):
            register(Again())

    register_plugin(Dup(), "dup")
    with pytest.raises(PluginError, match="already registered") as exc:
        rd_hooks.catalogue
    assert "'dup'" in str(exc.value) and "'local_services'" in str(exc.value)


def test_component_of_wrong_kind_rejected(rd_hooks, register_plugin):
    class Bad:
        @hookimpl
        def register_students(self, register):
            register(Again())

    class Again(Domain):
        name = "not_a_student"

    register_plugin(Bad(), "bad")
    with pytest.raises(PluginError, match="is a domain"):
        rd_hooks.catalogue


@pytest.mark.parametrize("name", ["", 5, None])
def test_a_component_without_a_string_name_is_refused_naming_the_plugin(rd_hooks, register_plugin, name):
    class Nameless:
        @hookimpl
        def register_domains(self, register):
            register(type("Unnamed", (Domain,), {"name": name})())

    register_plugin(Nameless(), "nameless")
    with pytest.raises(PluginError, match="plugin 'nameless' failed in hook 'register_domains'.*without a string 'name'"):
        rd_hooks.catalogue


def test_each_contract_names_the_methods_a_plugin_must_write():
    """The abstract methods of each kind's base class are the contract a third party implements
    (docs/plugins.md): a subclass missing one cannot be built, so it never reaches a run."""
    from reasondistill.catalogue import kind_bases

    must = {kind: sorted(base.__abstractmethods__) for kind, base in kind_bases().items()}
    assert must == {"stage": ["run"], "annotator": ["annotate"], "selector": ["select"], "backend": ["load"],
                    "student": ["build", "encode", "tokenizer"], "loss": ["compute"], "domain": [],
                    "model": ["materialize"]}
    student = kind_bases()["student"]
    with pytest.raises(TypeError, match="encode"):
        type("Half", (student,), {"name": "half", "tokenizer": lambda *a: None, "build": lambda *a: None})()


def test_tracing_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("REASONDISTILL_TRACE", "1")
    hooks = Hooks()
    hooks.catalogue
    hooks.aggregate_reward({"format": 1.0}, {})
    err = capsys.readouterr().err
    assert "register_domains <- local_services" in err and "reward_dimensions <- reward_format: ['format']" in err


@pytest.mark.parametrize("flag", ["wrapper", "hookwrapper"])
def test_hook_wrappers_are_refused_naming_the_plugin(rd_hooks, flag):
    """The facade calls implementations one by one; a wrapper would silently run as a plain one."""
    from reasondistill import hookimpl

    class Wrap:
        @hookimpl(**{flag: True})
        def on_stage_end(self, run, stage, result):
            yield

    with pytest.raises(PluginError, match="'wrapping'.*'on_stage_end' is a wrapper"):
        rd_hooks.register(Wrap(), "wrapping")
    assert "wrapping" not in rd_hooks.implementers()["on_stage_end"]


def test_cli_plugins_lists_every_hook_and_builtins(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    from reasondistill.manager import _spec_names

    assert set(data["hooks"]) == set(_spec_names())
    assert "local_services" in data["hooks"]["register_domains"]
    assert data["components"]["loss"]["crsd"]["plugin"] == "distill_losses"
    # every option of every component, with its default and description (docs point users here)
    assert data["components"]["stage"]["annotate"]["options"]["shard_size"]["default"] == 64
    assert data["components"]["stage"]["sft"]["options"]["max_steps"]["description"] == "overrides epochs when > 0"
    assert data["components"]["loss"]["crsd"]["options"]["temperature"]["default"] == 0.1
    assert "concurrency" in data["components"]["backend"]["openai"]["options"]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for hook in _spec_names():
        assert hook in out


THIRD_PARTY = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "rd-thirdparty-demo"
        version = "0.0.1"
        [project.entry-points.reasondistill]
        shouting = "rd_thirdparty_demo"
        """,
    "rd_thirdparty_demo.py": """
        from reasondistill import Options, Stage, StageResult, hookimpl

        class ShoutOptions(Options):
            word: str = "hello"

        class Shout(Stage):
            name = "shout"
            description = "writes its word in capitals"
            Options = ShoutOptions

            def run(self, ctx, options):
                (ctx.dir / "out.txt").write_text(options.word.upper())
                return StageResult(outputs={"out": "out.txt"}, metrics={"chars": len(options.word)})

        @hookimpl
        def register_stages(register):
            register(Shout())

        @hookimpl
        def reward_dimensions():
            return ["shouting"]

        @hookimpl
        def score_reasoning(example, completion, domain):
            return {"shouting": float(completion.isupper())}
        """,
}


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    src = tmp_path_factory.mktemp("thirdparty")
    for name, text in THIRD_PARTY.items():
        (src / name).write_text(textwrap.dedent(text))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True)
    return target


def _cli(args, site, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "reasondistill", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_third_party_distribution_is_discovered_and_runs(third_party, tmp_path):
    out = _cli(["plugins", "--json"], third_party, tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["components"]["stage"]["shout"]["plugin"] == "shouting"
    assert "shouting" in data["hooks"]["score_reasoning"]
    (tmp_path / "r.yaml").write_text("name: tp\nstages:\n  - uses: shout\n    options: {word: distil}\n")
    out = _cli(["run", "r.yaml"], third_party, tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / "tp" / "shout" / "out.txt").read_text() == "DISTIL"
    blocked = _cli(["run", "r.yaml", "--force", "shout"], third_party, tmp_path)
    assert blocked.returncode == 0
    env_block = {"REASONDISTILL_BLOCK_PLUGINS": "shouting"}
    os.environ.update(env_block)
    try:
        out = _cli(["validate", "r.yaml"], third_party, tmp_path)
    finally:
        del os.environ["REASONDISTILL_BLOCK_PLUGINS"]
    assert out.returncode == 2 and "stages[0].uses" in out.stderr and "shout" in out.stderr


def test_third_party_scorer_is_a_reward_dimension(third_party, tmp_path):
    """The 'shouting' scorer from the installed distribution shows up in preference pair scores."""
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        name: tpref
        models: {teacher: tiny-causal-lm}
        stages:
          - uses: pairs
            options: {n: 60}
          - uses: reasoning
            options: {source: column, limit: 8}
          - uses: preference
            options: {prompts: 4, candidates: 3, max_new_tokens: 8, min_margin: 0.0, max_steps: 1, batch_size: 2,
                      max_length: 256, on_low_parse: warn}
        """))
    out = _cli(["run", "p.yaml"], third_party, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    from datasets import load_from_disk

    prefs = load_from_disk(str(tmp_path / "runs" / "tpref" / "preference" / "preferences"))
    assert all("shouting" in row["chosen_scores"] and "format" in row["chosen_scores"] for row in prefs)


def test_a_plugin_that_fails_to_import_says_how_to_block_it(monkeypatch):
    from importlib.metadata import EntryPoint

    import reasondistill.manager as manager

    real = manager.entry_points

    def with_broken(group):
        return [*real(group=group), EntryPoint(name="broken_thing", value="no_such_module_for_rd", group=group)]

    monkeypatch.setattr(manager, "entry_points", with_broken)
    with pytest.raises(PluginError) as err:
        manager.build_plugin_manager()
    msg = str(err.value)
    assert "'broken_thing'" in msg and "no_such_module_for_rd" in msg and "\n" not in msg
    assert "REASONDISTILL_BLOCK_PLUGINS=broken_thing" in msg
    monkeypatch.setenv("REASONDISTILL_BLOCK_PLUGINS", "broken_thing")
    assert manager.build_plugin_manager().has_plugin("annotate")


def test_an_unknown_name_of_a_kind_nobody_registered_says_none_are():
    from reasondistill.catalogue import Catalogue
    from reasondistill.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown selector 'x'; registered: none"):
        Catalogue().get("selector", "x", "stages[0].options.selector")


@pytest.mark.parametrize("labels", [("relevant",), ("bad", "good", "bad"), ()])
def test_a_domain_needs_two_or_more_distinct_labels(rd_hooks, labels):
    from reasondistill import PluginError, hookimpl
    from reasondistill.plugins.domains.local_services import LocalServices

    class Few(LocalServices):
        name = "few_labels"
        label_descriptions = tuple("x" for _ in labels)

    Few.labels = labels

    class P:
        @hookimpl
        def register_domains(self, register):
            register(Few())

    rd_hooks.register(P(), "few")
    with pytest.raises(PluginError, match=r"labels must be two or more distinct names, got " + __import__("re").escape(repr(labels))):
        rd_hooks.catalogue.get("domain", "few_labels")
