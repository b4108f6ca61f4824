"""What the scoring server answers beyond the happy path: a model error, the probabilities'
precision, a package without label names, and the warning for a server others can reach."""

from __future__ import annotations

import logging
import shutil

import pytest

from reasondistill.score_server import Scorer, ServeOptions

from .serve_cases import PAIR
from .serve_running import SlowScorer, package, post, real_scorer, running  # noqa: F401 (fixtures)


def test_a_model_error_is_one_500_line_and_its_traceback_only_at_debug(package, real_scorer, caplog):
    """A scorer that raises: the client gets the error shape (500, the exception's type, nothing
    of its message), the log one error line; the traceback is kept for ``--log-level debug``."""

    class Broken(SlowScorer):
        def __call__(self, pairs):
            if any(p["query"] == "boom" for p in pairs):  # not the start-up warm-up
                raise RuntimeError("secret detail of the model")
            return super().__call__(pairs)

    with caplog.at_level(logging.DEBUG, logger="reasondistill"), \
            running(package, Broken(real_scorer)) as (url, _, _):
        status, _, resp = post(url, json={"pairs": [{**PAIR, "query": "boom"}]})
    assert status == 500 and resp.json() == {"error": "internal error: RuntimeError"}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "RuntimeError" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is None
    traced = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage() == "traceback"]
    assert len(traced) == 1 and traced[0].exc_info and traced[0].exc_info[0] is RuntimeError


def test_answers_carry_probabilities_to_six_decimals(package, real_scorer):
    with running(package, real_scorer) as (url, _, _):
        result = post(url, json={"pairs": [PAIR, {"query": "haircut", "item": "Corner Garden: dentist"}]})[2].json()
    for r in result["results"]:
        places = [len(repr(v).split(".")[1]) for v in [*r["probs"].values(), r["score"]] if "." in repr(v)]
        assert max(places) == 6, r


def test_a_package_without_label_names_is_served_with_numbered_labels(package, tmp_path):
    """An older or hand-made package whose metadata has no ``labels``: the scorer numbers the
    model's outputs ("0", "1", "2") rather than failing or guessing names."""
    import json

    copy = tmp_path / "model"
    shutil.copytree(package, copy)
    meta = json.loads((copy / "reasondistill.json").read_text())
    meta.pop("labels", None)
    (copy / "reasondistill.json").write_text(json.dumps(meta))
    scorer = Scorer(copy, "fp32")
    assert scorer.labels == ["0", "1", "2"]
    assert set(scorer.result(scorer([PAIR])[0])["probs"]) == {"0", "1", "2"}


@pytest.mark.parametrize(("host", "key", "warned"), [("0.0.0.0", None, True), ("10.1.2.3", None, True),
                                                     ("0.0.0.0", "k", False), ("127.0.0.1", None, False),
                                                     ("localhost", None, False), ("::1", None, False)])
def test_serving_beyond_this_machine_without_a_key_warns(host, key, warned, monkeypatch):
    from reasondistill.score_server import exposure_warning

    monkeypatch.delenv("REASONDISTILL_API_KEY", raising=False)
    message = exposure_warning(host, ServeOptions(api_key=key))
    assert (message is not None) == warned
    if warned:
        assert host in message and "--api-key" in message
