"""The version shims (``sdk/hf_compat.py``) against the transformers installed: each argument they
write is one this ``TrainingArguments`` or ``forward`` takes, and means what it says. ``make
test-min`` runs the same tests on the lowest declared transformers."""

import inspect

import pytest
import transformers
from packaging.version import Version
from transformers import TrainingArguments

from reasondistill import hf_compat


def args(tmp_path, **given) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **given)


def test_the_major_version_is_the_installed_ones():
    assert hf_compat.transformers_major() == Version(transformers.__version__).major


@pytest.mark.parametrize("on", [True, False])
def test_length_grouping_and_checkpointing_reach_the_trainer(tmp_path, on):
    grouped = args(tmp_path, **hf_compat.length_grouping_arg(on))
    assert (getattr(grouped, "train_sampling_strategy", None) == "group_by_length"
            or getattr(grouped, "group_by_length", False) is True) is on
    checkpointed = args(tmp_path, **hf_compat.checkpointing_arg(on))
    assert (getattr(checkpointed, "activation_checkpointing", False)
            or getattr(checkpointed, "gradient_checkpointing", False)) is on


def test_the_checkpointing_name_is_the_one_this_transformers_does_not_deprecate(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args(tmp_path, **hf_compat.checkpointing_arg(True))
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]


def test_a_warmup_ratio_reaches_the_trainer_as_a_ratio(tmp_path):
    warm = args(tmp_path, **hf_compat.warmup_arg(0.1))
    assert getattr(warm, "warmup_ratio", None) == 0.1 or warm.warmup_steps == 0.1
    assert warm.get_warmup_steps(100) == 10


def test_the_cache_argument_is_one_forward_takes(tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    assert hf_compat.cache_argument(model) in inspect.signature(type(model).forward).parameters
