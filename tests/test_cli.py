"""The command line's own contract (``reasondistill ...``): commands, their exit codes, what they
print; the commands' work is tested where it is done."""

from __future__ import annotations

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
