"""The learned reward model's parts: what each head is trained to rank (the signs of a preference
pair, per dimension) and an encoder that reads the segment ids of (prompt, answer)."""

import torch
from transformers import BertConfig, BertModel

from reasondistill.plugins.rewards.reward_model import MultiHeadRewardModel, preference_signs


def test_each_dimension_ranks_chosen_over_rejected_where_they_differ():
    chosen = {"label": 1.0, "format": 0.5, "length": 0.2, "faithful": None}
    rejected = {"label": 0.0, "format": 0.5, "length": 0.9, "faithful": 0.3}
    dims = ["label", "format", "length", "faithful", "unscored"]
    assert preference_signs(chosen, rejected, dims) == [1.0, 0.0, -1.0, -1.0, 0.0]


def test_the_encoder_reads_the_segment_ids():
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=40)).eval()
    model = MultiHeadRewardModel(encoder, ["label", "format"]).eval()
    ids = torch.randint(3, 64, (2, 8))
    mask, segments = torch.ones_like(ids), torch.tensor([[0] * 4 + [1] * 4] * 2)
    with torch.no_grad():
        expected = model.heads(encoder(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state[:, 0])
        assert torch.allclose(model(ids, mask, segments), expected, atol=1e-6)
        assert not torch.allclose(model(ids, mask), expected, atol=1e-4)  # the segments matter here


def test_each_heads_accuracy_is_the_share_of_decided_pairs_it_orders_right(tiny_encoder):
    from transformers import AutoModel, AutoTokenizer

    from reasondistill.plugins.rewards.reward_model import pairwise_accuracy

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    torch.manual_seed(0)
    model = MultiHeadRewardModel(AutoModel.from_pretrained(tiny_encoder), ["a", "b"])
    texts = [("pizza near me", "Blue Door: pizza"), ("gym", "Sunny Club: gym"), ("spa", "Nail salon")]
    encoded = [tok(q, i) for q, i in texts]
    with torch.no_grad():  # the model's own order of each pair's sides, per head
        scores = [model(**{k: torch.tensor([v]) for k, v in e.items()})[0] for e in encoded]
    rows = []
    for first, second in ((0, 1), (1, 2), (0, 2)):
        ordered = float(torch.sign(scores[first][0] - scores[second][0]))
        rows.append({**{f"chosen_{k}": v for k, v in encoded[first].items()},
                     **{f"rejected_{k}": v for k, v in encoded[second].items()}, "sign": [ordered, 0.0]})
    rows[2]["sign"][0] = -rows[2]["sign"][0]  # one of three pairs the head orders the other way
    assert pairwise_accuracy(model, tok, rows, ["a", "b"]) == {"a": 0.6667}  # head b: no decided pair
    assert pairwise_accuracy(model, tok, [], ["a", "b"]) == {}


def test_both_answers_of_a_pair_are_cut_to_max_length_with_the_prompt(tiny_encoder):
    from transformers import AutoTokenizer

    from reasondistill.plugins.rewards.reward_model import encode_preferences

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    long = " ".join(["pizza open late near the park"] * 20)
    prefs = [{"prompt": [{"role": "user", "content": "pizza near me"}], "chosen": [{"content": long}],
              "rejected": [{"content": long + " closed"}], "chosen_scores": {"label": 1.0}, "rejected_scores": {"label": 0.0}}]
    (row,) = encode_preferences(tok, prefs, ["label"], max_length=16)
    assert len(row["chosen_input_ids"]) == len(row["rejected_input_ids"]) == 16
    assert row["chosen_input_ids"][:5] == tok("pizza near me")["input_ids"][:5]  # the prompt first, kept whole
    assert row["sign"] == [1.0] and set(row) >= {"chosen_attention_mask", "rejected_attention_mask"}
