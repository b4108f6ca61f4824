"""What was trained is what is saved, evaluated, exported and served (issue 33, item 1).

A third-party student with its own head (a 2-layer MLP over [CLS], built as the plugin guide says:
``build`` + ``forward_view``) once trained, then lost its head on save: dev metrics, export and the
server all ran the untrained ``classifier``. These tests train such a student on the tiny models
through the real distill and export stages.
"""

import json

import numpy as np
import pytest
import torch

from reasondistill import PluginError, Recipe, hookimpl, step
from reasondistill.plugins.student.encoder import EncoderClassifier, EncoderStudent
from reasondistill.student_io import NETWORK_FILE, read_trained_outputs


class MLPHead(EncoderStudent):
    """[CLS] -> Linear -> GELU -> Linear: parameters outside ``network.model``."""

    def __init__(self, model, num_labels):
        super().__init__(model)
        hidden = model.config.hidden_size
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, num_labels))

    def forward_view(self, input_ids, attention_mask, token_type_ids=None):
        _, cls = super().forward_view(input_ids, attention_mask, token_type_ids)
        return self.mlp(cls), cls


class MLPHeadStudent(EncoderClassifier):
    name = "mlp-head-encoder"

    def build(self, model, num_labels, options, trust_remote_code=False, vocab_size=None):
        torch.manual_seed(1234)  # the same untrained head on every build: a dropped head must still differ
        return MLPHead(super().build(model, num_labels, options, trust_remote_code, vocab_size).model, num_labels)


class ForgetfulStudent(MLPHeadStudent):
    """A plugin whose own ``save`` writes only the encoder (the bug issue 33 found in the default)."""

    name = "forgetful-encoder"

    def save(self, network, tokenizer, folder):
        network.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


class Students:
    @hookimpl
    def register_students(self, register):
        register(MLPHeadStudent())
        register(ForgetfulStudent())


def recipe(student: str, export: bool = False) -> Recipe:
    stages = [step("pairs", n=240),
              step("distill", student=student, train_input="pairs", loss="ce", batch_size=16, learning_rate=3e-3,
                   max_steps=25, logging_steps=5, student_options={"max_length": 48})]
    if export:
        stages.append(step("export", agreement_rows=100))
    return Recipe(name="head", models={"student": "tiny-encoder"}, seed=3, stages=stages)


@pytest.fixture
def students(register_plugin):
    register_plugin(Students(), "test_students")


def test_custom_head_round_trip_and_export(rd_engine, rd_hooks, students):
    """Train, save, load, predict: the reload gives the trained network's probabilities; the
    export's agreement is measured against the trained network and the ONNX model has the head."""
    results = rd_engine.run(recipe("mlp-head-encoder", export=True))
    folder = rd_engine.runs_dir / "head" / "distill" / "student"
    assert (folder / NETWORK_FILE).exists()
    meta = json.loads((folder / "reasondistill.json").read_text())
    assert meta["student"] == "mlp-head-encoder" and meta["student_options"]["max_length"] == 48
    assert meta["base_model"] == "tiny-encoder"  # the model's name, not this machine's cache path

    trained = read_trained_outputs(folder)
    component = rd_hooks.catalogue.get("student", "mlp-head-encoder")
    reloaded = component.predictor(folder).predict_proba(trained["queries"], trained["items"])
    assert np.allclose(reloaded, trained["probs"], atol=1e-4)
    # the dev figures the stage recorded are this student's, head included
    from datasets import load_from_disk

    from reasondistill.metrics import classification_metrics
    from reasondistill.plugins.domains.local_services import LocalServices
    from reasondistill.predictor import render_items

    dev = [r for r in load_from_disk(str(rd_engine.runs_dir / "head" / "pairs" / "dev")) if r["label"] >= 0]
    queries, items = render_items(dev, LocalServices())
    probs = component.predictor(folder).predict_proba(queries, items)
    again = classification_metrics([r["label"] for r in dev], probs.argmax(-1), LocalServices().labels, probs, queries)
    recorded = results["distill"].metrics
    assert {k: round(v, 5) for k, v in again.items()} == {k: recorded[f"dev_{k}"] for k in again}
    # the head matters: the encoder's own (untrained) classifier gives other answers
    from reasondistill.predictor import Predictor

    plain = Predictor(folder).predict_proba(trained["queries"], trained["items"])
    assert not np.allclose(plain, trained["probs"], atol=1e-2)

    export = results["export"].metrics
    assert export["agreement_fp32"] == 1.0 and export["agreement_int8"] >= 0.9
    from reasondistill.onnx_export import OnnxPredictor

    onnx = OnnxPredictor(rd_engine.runs_dir / "head" / "export" / "model" / "onnx", "fp32")
    got = onnx.predict_proba(trained["queries"][:20], trained["items"][:20])
    assert np.allclose(got, np.asarray(trained["probs"][:20]), atol=1e-3)
    assert not (rd_engine.runs_dir / "head" / "export" / "model" / "trained_outputs.json").exists()

    # the student's own export, called as a third party would (quantized by default), under a
    # runtime that runs inference in bf16: the network is traced from fp32 weights all the same
    import dataclasses

    import onnx

    from reasondistill.runtime import current, using

    with using(dataclasses.replace(current(), inference_dtype="bfloat16")):
        names = component.export_onnx(folder, rd_engine.runs_dir / "own-export")
    assert set(names) == {"fp32", "int8"}, "quantized unless asked not to"
    graph = onnx.load(str(rd_engine.runs_dir / "own-export" / names["fp32"])).graph
    float_types = {t.data_type for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                               onnx.TensorProto.BFLOAT16)}
    assert float_types == {onnx.TensorProto.FLOAT}
    got = OnnxPredictor(rd_engine.runs_dir / "own-export", "fp32").predict_proba(trained["queries"][:20],
                                                                               trained["items"][:20])
    own = OnnxPredictor(rd_engine.runs_dir / "own-export", "fp32")
    rows = [{"query": q, "item": i} for q, i in zip(trained["queries"][:20], trained["items"][:20])]
    assert own.predict(rows) == own.predict_proba(trained["queries"][:20], trained["items"][:20]).argmax(-1).tolist()
    assert component.export_onnx(folder, rd_engine.runs_dir / "own-export") == names, "exports again in place"
    # fp32 all the way differs by ~5e-7 here; weights that went through bf16 by ~2e-4
    assert np.allclose(got, np.asarray(trained["probs"][:20]), atol=2e-5), "weights rounded to bf16 on the way"
    # a reload runs in the runtime's inference precision unless asked for the training one
    from reasondistill.student_io import load_network

    with using(dataclasses.replace(current(), inference_dtype="bfloat16")):
        assert next(load_network(component, folder).parameters()).dtype == torch.bfloat16
        assert next(load_network(component, folder, inference=False).parameters()).dtype == torch.float32
    # a server's ONNX session lets idle threads sleep; a batch job's spins
    def spinning(predictor):
        return predictor.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(OnnxPredictor(rd_engine.runs_dir / "own-export", "fp32", spin=False)) == "0"
    with pytest.raises(Exception):
        spinning(own)  # not set: onnxruntime's default, spinning
    # the card names the labels, and "none" where no gate or ship check ran
    card = (rd_engine.runs_dir / "head" / "export" / "model" / "README.md").read_text()
    assert "(`irrelevant`, `partly relevant`, `relevant`)" in card
    assert "| quality gate | none |" in card and "| ship check | none |" in card


def test_builtin_student_round_trip_writes_no_extra_file(rd_engine, rd_hooks):
    rd_engine.run(recipe("encoder-classifier"))
    folder = rd_engine.runs_dir / "head" / "distill" / "student"
    assert not (folder / NETWORK_FILE).exists()  # the plain sequence classifier holds everything
    trained = read_trained_outputs(folder)
    reloaded = rd_hooks.catalogue.get("student", "encoder-classifier").predictor(folder)
    assert np.allclose(reloaded.predict_proba(trained["queries"], trained["items"]), trained["probs"], atol=1e-4)


def test_a_save_that_drops_the_head_fails_the_stage_naming_the_plugin(rd_engine, students):
    with pytest.raises(PluginError, match=r"plugin 'test_students' failed in hook 'Student.save': the saved student .* "
                                          r"does not reproduce the trained network"):
        rd_engine.run(recipe("forgetful-encoder"))
    assert not (rd_engine.runs_dir / "head" / "distill" / "manifest.json").exists()


def test_artifacts_name_models_portably(rd_engine, tiny_encoder):
    """A recipe that names its student by a local folder records the folder's name and content
    digest in the export, the lineage and the model card, never this machine's absolute path."""
    run = recipe("encoder-classifier", export=True)
    run.models["student"] = str(tiny_encoder)
    rd_engine.run(run)
    package = rd_engine.runs_dir / "head" / "export" / "model"
    texts = {f: (package / f).read_text() for f in ("reasondistill.json", "lineage.json", "README.md")}
    base = json.loads(texts["reasondistill.json"])["base_model"]
    assert base.startswith(tiny_encoder.name + "@") and len(base.split("@")[1]) >= 12
    for name, text in texts.items():
        assert str(tiny_encoder) not in text and str(rd_engine.runs_dir) not in text, name


def test_the_round_trip_error_counts_every_changed_label_but_near_ties(tmp_path):
    """A label that moves to a lower class counts like one that moves up; a row the trained network
    had on a near-tie does not count."""
    from types import SimpleNamespace

    from reasondistill.student_io import check_round_trip, write_trained_outputs

    trained = [[0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.4, 0.4004, 0.1996], [0.8, 0.1, 0.1]]
    reloaded = [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4004, 0.4, 0.1996], [0.8, 0.1, 0.1]]
    write_trained_outputs(tmp_path, ["q"] * 4, ["i"] * 4, trained)
    saved = SimpleNamespace(predictor=lambda folder: SimpleNamespace(predict_proba=lambda q, i: reloaded))
    with pytest.raises(PluginError, match=r"probabilities differ by up to 0\.6 \(tolerance 0\.001\), 2 of 4 labels "
                                          r"changed"):
        check_round_trip(saved, tmp_path, "my_student")


def test_the_round_trip_returns_the_largest_difference_and_zero_with_nothing_to_compare(tmp_path):
    """No trained outputs (or none recorded): nothing is reloaded and no difference is claimed;
    otherwise the largest probability difference within the tolerance."""
    from types import SimpleNamespace

    from reasondistill.student_io import check_round_trip, write_trained_outputs

    def never(folder):
        raise AssertionError("nothing to compare: the student is not reloaded")

    assert check_round_trip(SimpleNamespace(predictor=never), tmp_path, "my_student") == 0.0
    write_trained_outputs(tmp_path, [], [], [])
    assert check_round_trip(SimpleNamespace(predictor=never), tmp_path, "my_student") == 0.0
    write_trained_outputs(tmp_path, ["q"] * 2, ["i"] * 2, [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    reloaded = [[0.1, 0.2004, 0.6996], [0.6, 0.3, 0.1]]
    saved = SimpleNamespace(predictor=lambda folder: SimpleNamespace(predict_proba=lambda q, i: reloaded))
    assert check_round_trip(saved, tmp_path, "my_student") == pytest.approx(0.0004)
