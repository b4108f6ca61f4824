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
