"""Your own data is checked at ``validate``, before any stage runs (issue 33, item 3).

A missing, empty or Latin-1 file, a wrong column or a label outside the domain's grades once failed
inside ``pairs`` after the run folder was made. ``validate`` now reads each source's first rows
(``VALIDATE_ROWS``) with the stage's own loader; the stage still checks every row, and a stage that
fails leaves no half-written run folder.
"""

import json
from pathlib import Path

import pytest

from reasondistill import DataError, Recipe, RecipeError, step
from reasondistill.plugins.pipeline.pairs_stage import VALIDATE_ROWS

HEADER = "query,item,label\n"


def recipe(source, **options) -> Recipe:
    return Recipe(name="own", domain="local_services", stages=[step("pairs", source=str(source), **options)])


def write_csv(path, rows, encoding="utf-8"):
    path.write_bytes((HEADER + "".join(f"{q},{i},{lab}\n" for q, i, lab in rows)).encode(encoding))
    return path


def text(path, content):
    path.write_text(content)
    return path


ROWS = [("pizza near me", "Blue Door: pizza", 2), ("gym", "Sunny Club: gym", 2), ("pizza", "Nail salon", 0)] * 10


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent.csv", r"source: .*absent\.csv: no such file or folder"),
    (lambda d: text(d / "empty.csv", ""), r"source: .*empty\.csv: the file is empty"),
    (lambda d: text(d / "header.csv", HEADER), r"source: .*header\.csv: no rows"),
    (lambda d: write_csv(d / "latin.csv", [("café crème", "Café du Port: café", 2)] * 3, "latin-1"),
     r"source: .*latin\.csv: invalid UTF-8 at byte \d+; if the file is in another encoding, set the pairs option "
     r"encoding"),
    (lambda d: write_csv(d / "seven.csv", ROWS[:5] + [("q", "i", 7)]),
     r"source: .*seven\.csv row 5: label 7 is outside the schema 0\.\.2"),
    (lambda d: write_csv(d / "text.csv", [("q", "i", "relevant")]),
     r"source: .*text\.csv row 0: column 'label' must be an integer grade, got 'relevant'; map text labels to "
     r"grades with the pairs option label_map"),
    (lambda d: text(d / "cols.csv", "search_term,title\nq,i\n"),
     r"source: .*cols\.csv: missing column 'query' \(columns: search_term, title\); map one with columns"),
    (lambda d: text(d / "bad.jsonl", '{"query": "q", "item": "i"}\nnot json\n'),
     r"source: .*bad\.jsonl line 2: not valid JSON"),
])
def test_a_bad_source_fails_validate_naming_the_file(rd_engine, tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(RecipeError, match=r"stages\[0\]\.options.*" + message):
        rd_engine.validate(recipe(path))
    assert not rd_engine.runs_dir.exists()  # nothing written


def test_dev_source_is_checked_too(rd_engine, tmp_path):
    good = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(RecipeError, match=r"dev_source: .*nope\.csv: no such file"):
        rd_engine.validate(recipe(good, dev_source=str(tmp_path / "nope.csv")))


def test_encoding_and_label_map_read_a_users_file(rd_engine, tmp_path):
    rows = [("café crème", "Café du Port: café", "relevant"), ("gym", "Nail salon", "irrelevant"),
            ("pizza", "Pizza hut: pizza and pasta", "partly")] * 10
    path = write_csv(tmp_path / "mine.csv", rows, "latin-1")
    res = rd_engine.run(recipe(path, encoding="latin-1", dev_fraction=0.0,
                               label_map={"irrelevant": 0, "partly": 1, "relevant": 2}))
    assert res["pairs"].metrics["pairs"] == 30
    from datasets import load_from_disk

    ds = load_from_disk(str(rd_engine.runs_dir / "own" / "pairs" / "pairs"))
    assert ds[0]["query"] == "café crème" and sorted(set(ds["label"])) == [0, 1, 2]


@pytest.mark.parametrize("options, message", [
    ({"encoding": "latin-9000"}, "encoding: unknown text encoding 'latin-9000'"),
    ({"label_map": {"relevant": 3}}, r"label_map: \{'relevant': 3\} outside the domain's grades 0\.\.2"),
    ({"label_map": {"unknown": -1}}, r"label_map: \{'unknown': -1\} outside the domain's grades 0\.\.2"),
])
def test_bad_encoding_or_label_map_fail_validate(rd_engine, tmp_path, options, message):
    with pytest.raises(RecipeError, match=message):
        rd_engine.validate(recipe(write_csv(tmp_path / "ok.csv", ROWS), **options))


def test_a_stage_that_fails_leaves_no_half_written_run_folder(rd_engine, tmp_path):
    """A bad row past the rows validate reads fails the stage; the run folder it made is gone."""
    path = write_csv(tmp_path / "late.csv", [("q%d" % i, "item", i % 3) for i in range(VALIDATE_ROWS + 5)] + [("q", "i", 9)])
    rd_engine.validate(recipe(path))  # the first rows are fine
    with pytest.raises(DataError, match=r"late\.csv row \d+: label 9 is outside the schema"):
        rd_engine.run(recipe(path))
    assert not (rd_engine.runs_dir / "own").exists()


def test_a_failed_stage_keeps_the_earlier_stages_and_its_own_work(rd_engine, tmp_path):
    """Only an empty stage folder goes: finished stages, and work a rerun resumes from, stay."""
    good = write_csv(tmp_path / "ok.csv", ROWS)
    run = Recipe(name="own", domain="local_services", models={"student": "tiny-encoder"}, stages=[
        step("pairs", source=str(good), dev_fraction=0.0),
        step("distill", train_input="pairs", loss="ce", batch_size=64, max_steps=1)])
    with pytest.raises(DataError, match="fewer than batch_size 64"):
        rd_engine.run(run)
    folder = rd_engine.runs_dir / "own"
    assert (folder / "pairs" / "manifest.json").exists() and not (folder / "distill").exists()
    assert json.loads((folder / "recipe.json").read_text())["name"] == "own"


def test_dev_queries_shared_with_train_and_repeated_pairs_are_counted_and_warned(rd_engine, tmp_path):
    from reasondistill.run_summary import warning_lines

    train = write_csv(tmp_path / "train.csv", ROWS)  # three distinct pairs, each ten times
    dev = write_csv(tmp_path / "dev.csv", [("gym", "Sunny Club: gym", 2), ("sushi", "Blue Door: pizza", 0)])
    m = rd_engine.run(recipe(train, dev_source=str(dev)))["pairs"].metrics
    assert m["dev_queries_in_train"] == 1 and m["duplicate_pairs"] == len(ROWS) - 3
    lines = warning_lines(rd_engine.runs_dir / "own")
    assert any("1 dev queries also occur in the training pairs" in line for line in lines)
    assert any(f"{len(ROWS) - 3} training pairs repeat" in line for line in lines)
    clean = rd_engine.run(Recipe(name="gen", stages=[step("pairs", n=100)]))["pairs"].metrics
    assert clean["dev_queries_in_train"] == 0  # dev_fraction holds out whole queries


@pytest.mark.parametrize("good_rows, found_at_validate", [(999, True), (1000, False)])
def test_validate_reads_exactly_the_documented_1000_rows(rd_engine, tmp_path, good_rows, found_at_validate):
    """docs/cli.md: ``validate`` reads the first 1,000 rows; row 1,001 waits for the run."""
    assert "first 1,000 rows" in (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    path = write_csv(tmp_path / "edge.csv", [("q%d" % i, "item", i % 3) for i in range(good_rows)] + [("q", "i", 9)])
    if found_at_validate:
        with pytest.raises(RecipeError, match=rf"edge\.csv row {good_rows}: label 9"):
            rd_engine.validate(recipe(path))
    else:
        rd_engine.validate(recipe(path))


def test_label_shares_are_reported_per_grade(rd_engine, tmp_path):
    rows = [("pizza", "Blue Door: pizza", 2)] * 6 + [("gym", "Nail salon", 0)] * 3 + [("spa", "Spa day: spa", 1)]
    m = rd_engine.run(recipe(write_csv(tmp_path / "shares.csv", rows), dev_fraction=0.0))["pairs"].metrics
    assert {k: v for k, v in m.items() if k.startswith("share_")} == {
        "share_irrelevant": 0.3, "share_partly_relevant": 0.1, "share_relevant": 0.6}


def test_a_changed_source_or_dev_file_reruns_the_stage_and_a_gone_one_is_named(rd_engine, tmp_path):
    from reasondistill.plugins.pipeline.pairs_stage import PairsOptions, PairsStage

    train, dev = write_csv(tmp_path / "t.csv", ROWS), write_csv(tmp_path / "d.csv", ROWS[:3])
    assert rd_engine.run(recipe(train, dev_source=str(dev)))["pairs"].metrics["dev"] == 3
    write_csv(dev, ROWS[:2])  # only the dev file changes
    assert rd_engine.run(recipe(train, dev_source=str(dev)))["pairs"].metrics["dev"] == 2
    write_csv(train, ROWS[:9])
    assert rd_engine.run(recipe(train, dev_source=str(dev)))["pairs"].metrics["pairs"] == 9
    dev.unlink()  # options made outside a recipe are not checked until the stage needs the file
    with pytest.raises(DataError, match=r"^dev_source: .*d\.csv: no such file or folder$"):
        PairsStage().input_fingerprints(PairsOptions(source=str(train), dev_source=str(dev)))
