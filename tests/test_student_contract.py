"""A third-party student that breaks the contract is named before any training (issue 33): what it
encodes, what ``build`` returns, the shape of its logits and a forward that raises, each one line
naming its plugin, found by the run's dry call."""

import re

import pytest
import torch

from reasondistill import Recipe, step
from reasondistill.plugins.student.encoder import EncoderClassifier, EncoderStudent


@pytest.mark.parametrize("broken, message", [
    ("encode", "'bad_student' failed in hook 'Student.encode': returned no std_input_ids/std_attention_mask"),
    ("layout", "'bad_student' failed in hook 'Student.encode': the loss needs the reasoning view"),
    ("build", "'bad_student' failed in hook 'Student.build': returned a Linear, not a torch.nn.Module with "
              "forward_view, hidden_size and extra (missing: forward_view, hidden_size, extra)"),
    ("logits", "'bad_student' failed in hook 'StudentNetwork.forward_view': the standard view's logits have shape "
               "(2, 6); the domain has 3 labels, so [2, 3] for 2 rows"),
    ("forward", "'bad_student' failed in hook 'StudentNetwork.forward_view': failed on a batch of 2 rows: "
                "RuntimeError: my head"),
    ("vector", "'bad_student' failed in hook 'StudentNetwork.forward_view': the standard view returned tuple, not "
               "(logits, cls) tensors"),
])
def test_a_student_breaking_the_contract_is_named_before_training(rd_engine, register_plugin, broken, message):
    """What a third-party student encodes and builds is checked on use: one line naming its plugin."""
    from reasondistill import PluginError, hookimpl

    class Bad(EncoderClassifier):
        name = "bad-student"

        def encode(self, tokenizer, queries, items, reasonings, options):
            out = super().encode(tokenizer, queries, items, reasonings, options)
            if broken == "encode":
                out.pop("std_attention_mask")
            if broken == "layout":
                out = {k: v for k, v in out.items() if k.startswith("std_")}
            return out

        def build(self, model, num_labels, options, trust_remote_code=False, vocab_size=None):
            if broken == "build":
                return torch.nn.Linear(2, 2)
            net = super().build(model, num_labels, options)
            wrong = {"logits": Twice, "forward": Raises, "vector": NoVector}.get(broken)
            return wrong(net.model) if wrong else net

    class Twice(EncoderStudent):  # a head of the wrong width
        def forward_view(self, input_ids, attention_mask, token_type_ids=None):
            logits, cls = super().forward_view(input_ids, attention_mask, token_type_ids)
            return torch.cat([logits, logits], -1), cls

    class Raises(EncoderStudent):
        def forward_view(self, input_ids, attention_mask, token_type_ids=None):
            raise RuntimeError("my head")

    class NoVector(EncoderStudent):  # a pair, but no [CLS] vector in it
        def forward_view(self, input_ids, attention_mask, token_type_ids=None):
            return super().forward_view(input_ids, attention_mask, token_type_ids)[0], None

    class P:
        @hookimpl
        def register_students(self, register):
            register(Bad())

    register_plugin(P(), "bad_student")
    recipe = Recipe(name="bad", models={"student": "tiny-encoder"},
                    stages=[step("pairs", n=60), step("distill", student="bad-student", train_input="pairs", loss="crsd",
                                                      reasoning_column="rationale", max_steps=1, batch_size=4)])
    with pytest.raises(PluginError, match="^stage 'distill': plugin " + re.escape(message)):
        rd_engine.run(recipe)
    assert not (rd_engine.runs_dir / "bad" / "distill" / "checkpoints").exists()
