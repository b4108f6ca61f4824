"""The encoder student on heads other than the tiny BERT's: ``head`` is the model's own
classification head for BERT-style (pooler, dropout, linear) and RoBERTa-style (a head reading
position 0) models and refuses any other by name; the reasoning view's text layout; the loss's
extra parameters stay the ones handed in."""

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from reasondistill.plugins.student.encoder import EncoderClassifier, EncoderStudent

SIZES = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=40, num_labels=3)


@pytest.mark.parametrize("make", [
    lambda: BertForSequenceClassification(BertConfig(**SIZES)),
    lambda: RobertaForSequenceClassification(RobertaConfig(**SIZES, pad_token_id=1)),
], ids=["bert", "roberta"])
def test_head_is_the_models_own_head(make):
    torch.manual_seed(0)
    net = make().eval()
    student = EncoderStudent(net)
    ids = torch.randint(3, 64, (4, 9))
    with torch.no_grad():
        logits, cls = student.forward_view(ids, torch.ones_like(ids))
        assert torch.allclose(student.head(cls), logits, atol=1e-6)


def test_a_head_of_another_shape_is_refused_by_name():
    net = GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=40,
                                                   num_labels=3))
    with pytest.raises(TypeError, match="reasoning_layout='shared' does not know the head of "
                                        "GPT2ForSequenceClassification; use reasoning_layout='separate'"):
        EncoderStudent(net).head(torch.zeros(2, 16))


def test_extra_parameters_handed_in_are_the_students():
    extra = torch.nn.ModuleDict({"projection": torch.nn.Linear(16, 8)})
    student = EncoderStudent(BertForSequenceClassification(BertConfig(**SIZES)), extra)
    assert student.extra is extra
    assert any(p is extra["projection"].weight for p in student.parameters())
    assert len(EncoderStudent(BertForSequenceClassification(BertConfig(**SIZES))).extra) == 0


def test_reasoning_view_is_item_sep_reasoning_and_a_space_without_a_sep_token(tiny_encoder):
    comp = EncoderClassifier()
    tok = comp.tokenizer(str(tiny_encoder))
    opts = comp.Options(max_length=32, reasoning_tokens=32)

    def second_segment(tokenizer):
        enc = comp.encode(tokenizer, ["pizza"], ["blue door pizza"], ["serves pizza"], opts)
        return tokenizer.decode(enc["rsn_input_ids"][0], skip_special_tokens=False)

    assert "blue door pizza [SEP] serves pizza [SEP]" in second_segment(tok)
    tok.sep_token = None
    assert "blue door pizza serves pizza" in second_segment(tok)
