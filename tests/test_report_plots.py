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


def test_the_confusion_figure_writes_each_count_in_its_cell():
    gold, pred = [0, 0, 1, 2, -1, 2, 2], [0, 1, 1, 2, 0, 3, 4]  # no gold label (-1) and unknown labels: left out
    assert run_report.confusion_counts(gold, pred, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    fig = run_report.confusion_figure(gold, pred, ["a", "b", "c"], "t")
    assert [t.get_text() for t in fig.axes[0].texts] == ["1", "1", "0", "0", "1", "0", "0", "0", "1"]
    run_report._plt().close(fig)


def test_loss_curves_draw_each_term_and_bars_fill_a_missing_key_with_zero(tmp_path):
    history = [{"step": 1, "loss": 1.0, "loss_ce": 0.5, "lr": 0.1}, {"step": 2, "loss": 0.8}]
    fig = run_report.loss_figure(history, "t")
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines}
    assert lines == {"loss": ([1, 2], [1.0, 0.8]), "loss_ce": ([1], [0.5])}
    run_report._plt().close(fig)
    fig = run_report.bars_figure({"before": {"x": 1.0, "y": 2.0}, "after": {"x": 3.0}}, "t", log=True)
    heights = [[bar.get_height() for bar in c] for c in fig.axes[0].containers]
    assert heights == [[1.0, 2.0], [3.0, 0.0]] and fig.axes[0].get_yscale() == "log"
    run_report._plt().close(fig)
    assert not run_report.loss_png([{"step": 1, "lr": 0.1}], "t", tmp_path / "l.png") and not (tmp_path / "l.png").exists()
    assert not run_report.bars_png({"a": {}}, "t", tmp_path / "b.png") and not (tmp_path / "b.png").exists()
    assert run_report.loss_png(history, "t", tmp_path / "l.png") and (tmp_path / "l.png").stat().st_size > 1000


def test_teacher_confusion_names_the_runs_domain_labels(tmp_path):
    assert run_report._labels(tmp_path, "web_search_zh") == LABELS
    assert run_report._labels(tmp_path, "no_such_domain") == ["0", "1", "2"]
