"""The annotation stage's work on disk and its stop rule, on their own: shards are readable,
checked and redone when incomplete; a run stops only past ``max_failed_share``."""

from __future__ import annotations

import pytest


def test_a_failed_share_equal_to_max_failed_share_goes_on(tmp_path):
    """``max_failed_share`` is the largest share of failed rows a run goes on with: 1 of 4 under
    0.25 goes on, 2 of 4 stops naming the option, the count, the last error and the kept shards."""
    from reasondistill.errors import DataError
    from reasondistill.plugins.annotation.sharded_run import check_failed_share

    rows = [{"error": None}, {"error": "HTTP 500 on POST /chat/completions"}, {"error": None}]
    check_failed_share(1, 4, 0.25, rows, tmp_path)
    check_failed_share(0, 4, 0.0, rows, tmp_path)
    with pytest.raises(DataError) as err:
        check_failed_share(2, 4, 0.25, rows, tmp_path)
    assert "2 of 4 rows failed" in str(err.value) and "max_failed_share 0.25" in str(err.value)
    assert "HTTP 500 on POST" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="in an earlier shard"):
        check_failed_share(1, 4, 0.0, [{"error": None}], tmp_path)


def test_a_shard_is_readable_text_and_needs_its_checksum(tmp_path):
    """Shards keep Chinese (any) text as written, so a person can read them; a shard whose checksum
    file is missing (a crash between the two writes) is redone, not trusted."""
    from reasondistill.plugins.annotation.shards import read_shard, write_shard

    rows = [{"query": "北京天气", "reasoning": "标题提到北京天气。"}]
    write_shard(tmp_path, 0, rows)
    assert "北京天气" in (tmp_path / "shard-00000.jsonl").read_text(encoding="utf-8")
    assert read_shard(tmp_path, 0) == rows
    (tmp_path / "shard-00000.sha256").unlink()
    assert read_shard(tmp_path, 0) is None
    write_shard(tmp_path, 1, rows)
    (tmp_path / "shard-00001.jsonl").unlink()
    assert read_shard(tmp_path, 1) is None


def test_the_progress_bar_shows_speed_failures_parse_rate_retries_and_cost():
    import io

    from tqdm import tqdm

    from reasondistill.plugins.annotation.sharded_run import show_speed

    bar = tqdm(total=10, file=io.StringIO())
    show_speed(bar, 4.0, 10, 300, 1, 0.875, {"errors_429": 2, "errors_5xx": 1, "requests": 12, "cost": 0.123456})
    assert bar.postfix == "cost=0.1235, failed=1, pairs_s=2.50, parsed=88%, retried=3, tok_s=75.0"  # tqdm sorts them
    show_speed(bar, 0.0, 3, 0, 0, 1.0, {})  # no time yet: no division by zero, no served figures
    assert bar.postfix == "failed=0, pairs_s=3000000000.00, parsed=100%, tok_s=0.0"
