"""Report plots of a CJK domain: drawn with a CJK font when one is installed, numbered otherwise;
never the empty boxes DejaVu Sans draws for Chinese."""

import warnings

import pytest

from reasondistill.plugins.pipeline import run_report
from reasondistill.plugins.domains.web_search_zh import WebSearchZh

LABELS = list(WebSearchZh.labels)


def _draw(tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        note = run_report.confusion_png([0, 1, 2, 2], [0, 2, 2, 1], LABELS, "web_search_zh", tmp_path / "c.png")
    missing = [str(w.message) for w in seen if "missing from font" in str(w.message)]
    return note, missing


def test_without_a_cjk_font_labels_are_numbered_and_the_report_names_them(tmp_path, monkeypatch):
    monkeypatch.setattr(run_report, "cjk_font", lambda: None)
    note, missing = _draw(tmp_path)
    assert not missing, missing
    assert note.startswith("Labels: 0 = 不相关, 1 = 部分相关, 2 = 相关") and "reasondistill[cjk]" in note
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert run_report.plot_labels(["bad", "good"]) == (["bad", "good"], None)  # latin labels stay as they are


def test_with_a_cjk_font_labels_are_drawn(tmp_path):
    if run_report.cjk_font() is None:
        pytest.skip("no CJK font here (pip install 'reasondistill[cjk]')")
    note, missing = _draw(tmp_path)
    assert note is None and not missing, missing
