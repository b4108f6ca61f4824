"""Report plots of a CJK domain: drawn with a CJK font when one is installed, numbered otherwise;
never the empty boxes DejaVu Sans draws for Chinese."""

import warnings
from pathlib import Path

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


def test_the_fonts_of_the_cjk_extra_are_registered(tmp_path, monkeypatch):
    """``mplfonts`` (the ``cjk`` extra) ships font files; they are added to matplotlib's fonts."""
    import shutil

    import matplotlib
    from matplotlib import font_manager

    fonts = tmp_path / "mplfonts" / "fonts"
    fonts.mkdir(parents=True)
    (tmp_path / "mplfonts" / "__init__.py").write_text("")
    shipped = fonts / "Shipped.ttf"
    shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif-Bold.ttf", shipped)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_report.cjk_font.cache_clear()
    try:
        run_report.cjk_font()
        assert str(shipped) in {f.fname for f in font_manager.fontManager.ttflist}
    finally:
        run_report.cjk_font.cache_clear()
