"""The ``reasondistill`` command line: run, validate, plugins, recipes, show.

Bad input (an invalid recipe, unknown stage, bad data) prints one line naming the field or file
and exits with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .engine import Engine
from .errors import ArtifactError, ReasonDistillError, RecipeError
from .manager import get_hooks
from .recipe import builtin_recipes, find_recipe, load_recipe
from .run_summary import run_json, run_table, verdict_lines, warning_lines
from .score_server import ServeOptions, serve
from .student_package import find_package, missing


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a YAML recipe file, or the name of a built-in recipe (see `reasondistill recipes`)")
    p.add_argument("--profile", help="apply a profile defined in the recipe (e.g. tiny)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasondistill", description="Distil a reasoning LLM teacher into a fast relevance student.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage decision")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe; skips up-to-date stages and resumes cut-off ones")
    _recipe_args(p)
    p.add_argument("--runs-dir", default="runs", help="folder holding runs/<name>/<stage>/ (default: runs)")
    p.add_argument("--name", help="run name (default: the recipe's name)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun STAGE (and all after it); repeatable")

    p = sub.add_parser("validate", help="check a recipe against the installed plugins; writes nothing")
    _recipe_args(p)
    p.add_argument("--deep", action="store_true", help="also dry-call every plugin the run uses on a few of its "
                   "rows (domain, reward scorers, the student's forward): what run does first, without training")

    p = sub.add_parser("plugins", help="every hook and the plugins implementing it, and every component")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("recipes", help="list the built-in recipes")

    p = sub.add_parser("serve", help="score pairs over HTTP with a run's exported student (POST /score)")
    p.add_argument("target", help="a run name (under --runs-dir), a run folder, or a student package folder")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)

    for name, field in ServeOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = {"int": int, "float": float}.get(getattr(field.annotation, "__name__", ""), str)
        if name == "threads":
            kind = int
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, []) or "(default" in (field.description or "") else f" (default {default})"
        choices = list(getattr(field.annotation, "__args__", ())) if "Literal" in str(field.annotation) else None
        p.add_argument(flag, dest=name, type=kind, default=None, choices=choices, help=f"{field.description}{shown}")

    p = sub.add_parser("push", help="upload a run's student package to the Hugging Face Hub")
    p.add_argument("target", help="a run name (under --runs-dir), a run folder, or a student package folder")
    p.add_argument("--repo-id", required=True, help="the hub repository, e.g. my-org/relevance-student")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list what would be uploaded")

    p = sub.add_parser("show", help="a run's stages, timings and metrics as a table")
    p.add_argument("run", help="run name (under --runs-dir) or a run folder")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--all", action="store_true", help="every metric of every stage (default: the headline numbers)")
    p.add_argument("--json", action="store_true", help="every stage's status, seconds and metrics as JSON")
    return parser


def cmd_run(args) -> int:
    recipe = load_recipe(args.recipe, args.profile)
    results = Engine(runs_dir=args.runs_dir).run(recipe, force=args.force, source=str(find_recipe(args.recipe)), name=args.name)
    ran = [n for n, r in results.items() if not r.skipped]
    run_dir = Path(args.runs_dir) / (args.name or recipe.name)
    print(f"run {args.name or recipe.name}: {len(ran)} stage(s) ran, {len(results) - len(ran)} up to date -> {run_dir}")
    print(run_table(run_dir))
    for line in verdict_lines(run_dir) + warning_lines(run_dir):
        print(line)
    return 0


def cmd_validate(args) -> int:
    recipe = load_recipe(args.recipe, args.profile)
    engine, source = Engine(), str(find_recipe(args.recipe))
    stages = engine.validate(recipe, source=source)
    deep = f"; every plugin dry-called on {engine.check_deep(recipe, source)} rows" if args.deep else ""
    print(f"{recipe.name}: valid ({len(stages)} stages: {', '.join(s.name for s in stages)}){deep}")
    return 0


def cmd_plugins(args) -> int:
    hooks = get_hooks()
    impls = hooks.implementers()
    comps = {kind: {name: {"plugin": e.plugin, "family": e.family, "description": e.component.description,
                           "options": options_schema(e.component)}
                    for name, e in sorted(entries.items())} for kind, entries in hooks.catalogue.entries.items()}
    if args.json:
        print(json.dumps({"hooks": impls, "components": comps}, indent=2))
        return 0
    print("Hooks (implementers in call order):")
    for hook, plugins in impls.items():
        print(f"  {hook:<26} {', '.join(plugins) or '-'}")
    print("\nComponents:")
    for kind, entries in sorted(comps.items()):
        for name, info in entries.items():
            print(f"  {kind:<10} {name:<24} {info['plugin']:<18} {info['description']}")
    return 0


def options_schema(component) -> dict:
    """Each option of a component: type, default and description, from its pydantic ``Options``."""
    model = getattr(component, "Options", None)
    if model is None or not hasattr(model, "model_json_schema"):
        return {}
    try:
        return model.model_json_schema().get("properties", {})
    except Exception as exc:  # a third-party Options pydantic cannot describe: say so, list the rest
        return {"error": f"cannot describe options: {type(exc).__name__}"}


def cmd_recipes(args) -> int:
    import yaml

    for name, path in builtin_recipes().items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        print(f"{name:<14} {str(raw.get('description', '')).strip().splitlines()[0] if raw.get('description') else ''}")
    return 0


def cmd_show(args) -> int:
    folder = Path(args.run) if Path(args.run).is_dir() and (Path(args.run) / "recipe.json").exists() else Path(args.runs_dir) / args.run
    if args.json:
        print(run_json(folder))
        return 0
    print(run_table(folder, full=args.all))
    for line in verdict_lines(folder) + warning_lines(folder):
        print(line)
    return 0


def serve_options(args) -> ServeOptions:
    """The server's options from the flags given (the rest keep their defaults); a bad value is
    an error naming its flag."""
    from pydantic import ValidationError

    given = {k: getattr(args, k) for k in ServeOptions.model_fields if getattr(args, k) is not None}
    try:
        return ServeOptions(**given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = str(err["loc"][0]) if err["loc"] else "max_wait_ms"  # the one check across two options
        raise RecipeError("--" + field.replace("_", "-"), err["msg"].removeprefix("Value error, ")) from None


def cmd_serve(args) -> int:
    folder = find_package(args.target, args.runs_dir)
    serve(folder, args.host, args.port, serve_options(args))
    return 0


def cmd_push(args) -> int:
    folder = find_package(args.target, args.runs_dir)
    missing(folder, raise_error=True)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if args.dry_run:
        print(f"{folder} -> {args.repo_id} ({len(files)} files):")
        for f in files:
            print(f"  {f}")
        return 0
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        url = api.upload_folder(folder_path=str(folder), repo_id=args.repo_id, commit_message="reasondistill push")
    except Exception as exc:  # offline, no token, no rights: one line, nothing half-done locally
        raise ArtifactError(f"push to {args.repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    print(f"pushed {len(files)} files to {url}")
    return 0


COMMANDS = {"run": cmd_run, "serve": cmd_serve, "push": cmd_push, "validate": cmd_validate, "plugins": cmd_plugins, "recipes": cmd_recipes, "show": cmd_show}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ReasonDistillError as exc:
        if args.verbose:  # the whole story for the plugin's author; one line otherwise
            import traceback

            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
        print(f"reasondistill: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
