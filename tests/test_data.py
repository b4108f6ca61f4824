"""Loading pairs: formats, column mapping, contract errors and documented repairs."""

import csv
import json

import pytest

from reasondistill import DataError
from reasondistill.data import load_pairs
from reasondistill.plugins.domains.local_services import generate_pairs

ROWS = [{"search_term": "drill", "product_title": "Cordless Drill", "relevance": 2},
        {"search_term": "paint", "product_title": "Paint Roller", "relevance": 1}]
MAPPING = {"query": "search_term", "item": "product_title", "label": "relevance"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_all_formats_with_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    j = write_jsonl(tmp_path / "p.jsonl", ROWS)
    c = tmp_path / "p.csv"
    with open(c, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "disk"))
    for path in (j, c, tmp_path / "p.parquet", tmp_path / "disk"):
        ds, report = load_pairs(path, columns=MAPPING, num_labels=3)
        assert ds["query"] == ["drill", "paint"] and ds["label"] == [2, 1], path
        assert ds["pair_id"] == [f"{path.stem}-0", f"{path.stem}-1"]
        assert report.rows_read == 2


def test_missing_column_names_column_and_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DataError) as exc:
        load_pairs(path)
    assert "p.jsonl" in str(exc.value) and "'query'" in str(exc.value) and "search_term" in str(exc.value)


@pytest.mark.parametrize("row, match", [
    ({"query": "a", "item": "b", "label": "high"}, "column 'label' must be an integer"),
    ({"query": "a", "item": "b", "label": 7}, "outside the schema"),
    ({"query": "a", "item": "b", "label": 1.5}, "must be an integer"),
    ({"query": ["a"], "item": "b"}, "column 'query' must be text"),
])
def test_bad_rows(tmp_path, row, match):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"query": "ok", "item": "ok", "label": 0}, row])
    with pytest.raises(DataError, match=match) as exc:
        load_pairs(path, num_labels=3)
    assert "bad.jsonl row 1" in str(exc.value)


def test_invalid_utf8_and_json_name_the_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"query": "a", "item": "b"}\n{"query": "\xff", "item": "b"}\n')
    with pytest.raises(DataError, match="u.jsonl line 2: invalid UTF-8"):
        load_pairs(path)
    path.write_text('{"query": "a", "item": "b"}\n{"query": \n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_pairs(path)


def test_duplicate_pair_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"pair_id": "x", "query": "a", "item": "b"}] * 2)
    with pytest.raises(DataError, match="duplicate pair_id 'x'"):
        load_pairs(path)


def test_repairs_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"query": "a\x00b", "item": "c"}, {"query": " ", "item": "c"},
                                              {"query": "q", "item": ""}])
    ds, report = load_pairs(path)
    assert ds["query"] == ["ab"] and report.dropped_empty == 2 and report.nul_bytes_removed == 1
    assert len(report.repairs) == 2


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_pairs(tmp_path / "x.txt")


def test_homedepot_loads_by_path(homedepot):
    ds, _ = load_pairs(homedepot / "dev.jsonl", limit=500, num_labels=3)
    assert len(ds) == 500 and set(ds["label"]) <= {0, 1, 2}
    assert {"query", "item", "pair_id", "item_id"} <= set(ds.column_names)


def test_generator_is_deterministic_and_graded():
    a, b = generate_pairs(n=300, seed=3), generate_pairs(n=300, seed=3)
    assert a == b and generate_pairs(n=300, seed=4) != a
    shares = [sum(r["label"] == g for r in a) / len(a) for g in range(3)]
    assert all(s > 0.1 for s in shares), shares
    assert all(r["rationale"] for r in a)


def test_generator_rule_without_noise():
    for r in generate_pairs(n=400, seed=1, noise=0.0):
        why = r["rationale"]
        if r["label"] == 2:
            assert "does not match" not in why and "different kind" not in why, r
        elif r["label"] == 0:
            assert "does not match" in why or "different kind" in why, r
        else:
            assert "related" in why or why.count("does not match") == 1, r


def test_an_extra_column_of_mixed_types_is_named(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"query": "q1", "item": "i1", "label": 1, "price": 3}, {"query": "q2", "item": "i2", "label": 0, "price": "n/a"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"mixed\.jsonl: columns have inconsistent types"):
        load_pairs(str(path))
