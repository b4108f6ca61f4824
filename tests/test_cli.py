"""The command line's own contract (``reasondistill ...``): commands, their exit codes, what they
print; the commands' work is tested where it is done."""

from __future__ import annotations

import re

import pytest
import yaml

from reasondistill.cli import main
from reasondistill.recipe import builtin_recipes


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "run" in capsys.readouterr().err


def test_recipes_lists_each_builtin_with_the_first_line_of_its_description(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recipes = builtin_recipes()
    assert len(lines) == len(recipes) and {line.split()[0] for line in lines} == set(recipes)
    for line in lines:
        name = line.split()[0]
        description = (yaml.safe_load(recipes[name].read_text(encoding="utf-8")) or {}).get("description") or ""
        assert line[14:].strip() == (description.strip().splitlines()[0] if description.strip() else "")
        assert description, f"{name}: a built-in recipe says what it is for"


def test_push_needs_a_repository(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["push", "some-run"])
    assert exc.value.code == 2 and "--repo-id" in capsys.readouterr().err


def test_show_takes_a_run_folder_or_a_run_name(tiny_quickstart, capsys):
    assert main(["show", str(tiny_quickstart / "quickstart")]) == 0
    by_folder = capsys.readouterr().out
    assert main(["show", "quickstart", "--runs-dir", str(tiny_quickstart)]) == 0
    assert capsys.readouterr().out == by_folder and "distill" in by_folder


def test_push_dry_run_lists_the_package_and_sends_nothing(tiny_quickstart, capsys):
    assert main(["push", "quickstart", "--runs-dir", str(tiny_quickstart), "--repo-id", "me/student", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("-> me/student (%d files):" % (len(out) - 1)) and "  README.md" in out


def test_plugins_lists_every_component_with_its_plugin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    components = out.split("Components:", 1)[1].splitlines()
    assert any(line.split()[:3] == ["loss", "crsd", "distill_losses"] for line in components if line.strip())
    assert sum(1 for line in components if line.startswith("  domain ")) >= 3


def test_importing_a_command_module_runs_nothing(capsys):
    """The modules with a ``__main__`` block print only when run, never when imported."""
    import importlib

    import reasondistill.cli
    import reasondistill.options_doc

    for module in (reasondistill.options_doc, reasondistill.cli):
        importlib.reload(module)
    assert capsys.readouterr().out == ""


def test_serve_flags_given_override_the_defaults_and_a_bad_one_is_named():
    from reasondistill.cli import build_parser, serve_options
    from reasondistill.errors import RecipeError
    from reasondistill.score_server import ServeOptions

    options = serve_options(build_parser().parse_args(["serve", "pkg", "--max-batch", "8", "--max-wait-ms", "2.5"]))
    assert options == ServeOptions(max_batch=8, max_wait_ms=2.5)
    assert build_parser().parse_args(["serve", "pkg"]).port == 8080  # as docs/cli.md and docs/serving.md show
    assert serve_options(build_parser().parse_args(["serve", "pkg"])) == ServeOptions()
    with pytest.raises(RecipeError, match="--max-batch"):
        serve_options(build_parser().parse_args(["serve", "pkg", "--max-batch", "0"]))
    with pytest.raises(RecipeError, match="^--max-batch: ") as two:  # of two bad flags, the first is named
        serve_options(build_parser().parse_args(["serve", "pkg", "--max-batch", "0", "--max-pairs", "0"]))
    assert "max-pairs" not in str(two.value)


def test_run_says_how_many_stages_ran_and_how_many_were_up_to_date(tmp_path, capsys):
    recipe = tmp_path / "two.yaml"
    recipe.write_text("name: two\nstages:\n  - uses: pairs\n    options: {n: 60}\n"
                      "  - uses: pairs\n    name: more\n    options: {n: 80}\n")
    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert main(["run", str(recipe), *runs]) == 0
    assert capsys.readouterr().out.startswith(f"run two: 2 stage(s) ran, 0 up to date -> {tmp_path / 'runs' / 'two'}\n")
    assert main(["run", str(recipe), *runs]) == 0
    assert capsys.readouterr().out.startswith("run two: 0 stage(s) ran, 2 up to date")


def test_run_and_show_print_the_warnings_under_the_table(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    row = '{"query": "pizza", "item": "Blue Door: pizza", "label": 2}\n'
    pairs.write_text(row * 3 + '{"query": "gym", "item": "Sunny Club: gym", "label": 0}\n' * 37)
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(f"name: dup\nstages:\n  - uses: pairs\n    options: {{source: {pairs}, dev_fraction: 0.0}}\n")
    runs = tmp_path / "runs"
    warning = "warning: pairs: 38 training pairs repeat a (query, item) pair already seen: they weigh more in training"
    assert main(["run", str(recipe), "--runs-dir", str(runs)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(warning)
    assert main(["show", str(runs / "dup")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(warning)


def test_push_creates_the_repository_or_adds_to_one_that_exists(tiny_quickstart, capsys, monkeypatch):
    """The hub client is replaced by one that records its calls: nothing leaves this machine."""
    import huggingface_hub

    calls = []

    class Hub:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload_folder", folder_path, repo_id))
            return f"https://hub/{repo_id}"

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    assert main(["push", "quickstart", "--runs-dir", str(tiny_quickstart), "--repo-id", "me/student", "--private"]) == 0
    folder = str(tiny_quickstart / "quickstart" / "export" / "model")
    assert calls == [("create_repo", "me/student", True, True), ("upload_folder", folder, "me/student")]
    out = capsys.readouterr().out
    assert out.startswith("pushed ") and out.rstrip().endswith("files to https://hub/me/student")

    class Offline(Hub):
        def create_repo(self, repo_id, private, exist_ok):
            raise ConnectionError("no network\n(a long traceback of the HTTP client)")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert main(["push", "quickstart", "--runs-dir", str(tiny_quickstart), "--repo-id", "me/student"]) == 2
    assert capsys.readouterr().err.strip().endswith("push to me/student failed: ConnectionError: no network")


def test_serve_help_shows_a_default_only_where_there_is_one(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 64)" in text and "(default None)" not in text and "(default [])" not in text
    assert "(default: all cores)" in text  # a description that says its default keeps its own words


def test_validate_dry_calls_every_plugin_only_when_deep(tmp_path, capsys):
    recipe = tmp_path / "one.yaml"
    recipe.write_text("name: one\nstages:\n  - uses: pairs\n    options: {n: 60}\n")
    assert main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out.strip() == "one: valid (1 stages: pairs)"
    assert main(["validate", str(recipe), "--deep"]) == 0
    assert re.fullmatch(r"one: valid \(1 stages: pairs\); every plugin dry-called on \d+ rows", capsys.readouterr().out.strip())


def test_recipes_shows_the_first_line_of_a_longer_description(tmp_path, capsys, monkeypatch):
    from reasondistill import cli

    path = tmp_path / "long.yaml"
    path.write_text("name: long\ndescription: |\n  First line.\n  Second line.\nstages: []\n")
    monkeypatch.setattr(cli, "builtin_recipes", lambda: {"long": path})
    assert main(["recipes"]) == 0
    assert capsys.readouterr().out == "long           First line.\n"


def test_the_options_reference_lists_built_in_components_unless_asked_for_all(rd_hooks, register_plugin):
    from reasondistill import Selector, hookimpl
    from reasondistill.options_doc import options_markdown

    class Mine(Selector):
        name = "mine"

        def select(self, rows, probabilities, k, seed, options):
            return list(range(k))

    class P:
        @hookimpl
        def register_selectors(self, register):
            register(Mine())

    register_plugin(P(), "mine_plugin")
    assert "### `mine`" not in options_markdown(rd_hooks.catalogue)
    assert "### `mine`" in options_markdown(rd_hooks.catalogue, builtin_only=False)
    assert "### `uncertainty`" in options_markdown(rd_hooks.catalogue)
