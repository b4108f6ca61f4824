"""The real offline weights: SmolLM2-135M-Instruct (teacher) and all-MiniLM-L6-v2 (student)."""

import pytest

from reasondistill import Recipe, step

pytestmark = pytest.mark.slow


def test_smollm2_through_dapt_sft_preference_and_reload(rd_engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = Recipe(name="smol", models={"teacher": "smollm2-135m-instruct"}, stages=[
        step("pairs", n=60),
        step("dapt", max_steps=2, batch_size=2, max_length=64, lora_r=4),
        step("reasoning", source="column", limit=8),
        step("sft", max_steps=2, batch_size=2, max_length=256, lora_r=4),
        step("preference", prompts=2, candidates=2, max_new_tokens=16, min_margin=0.0, on_low_parse="warn", max_steps=1, batch_size=2,
             max_length=256, lora_r=4),
    ])
    results = rd_engine.run(recipe)
    for stage in ("dapt", "sft", "preference"):
        assert results[stage].metrics["steps"] >= 1, stage
    folder = rd_engine.runs_dir / "smol" / "preference" / "teacher"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama" and model.dtype.is_floating_point
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], tokenize=False, add_generation_prompt=True)
    inputs = tok(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) >= 1 and tok.decode(new, skip_special_tokens=True).strip(), "the reloaded teacher writes text"
    from safetensors.torch import load_file

    from reasondistill.model_refs import resolve_model

    base = load_file(f"{resolve_model('smollm2-135m-instruct', rd_engine.hooks)}/model.safetensors")
    tuned = load_file(str(folder / "model.safetensors"))
    key = next(k for k in tuned if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not (tuned[key] == base[key]).all(), "the saved teacher is the trained one, not the base model"


def test_minilm_student_trains_and_exports(rd_engine):
    recipe = Recipe(name="mini", models={"student": "all-minilm-l6-v2"}, stages=[
        step("pairs", n=120),
        step("distill", train_input="pairs", reasoning_column="rationale", max_steps=3, batch_size=8,
             student_options={"max_length": 48, "reasoning_tokens": 32}),
        step("export", agreement_rows=40),
    ])
    results = rd_engine.run(recipe)
    assert results["distill"].metrics["steps"] == 3
    assert results["export"].metrics["agreement_fp32"] == 1.0


def test_real_sources_declare_their_positions_and_the_converted_teacher_pads(rd_hooks):
    """The positions a source declares are what validate holds a token budget to; the GGUF
    conversion keeps a pad token for batched generation (the tokenizer's, else end of text), and
    SmolLM2's own weights (it still knows a capital)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from reasondistill.model_refs import resolve_model

    for name in ("all-minilm-l6-v2", "smollm2-135m-instruct"):
        folder = resolve_model(name, rd_hooks)
        source = rd_hooks.catalogue.get("model", name)
        assert AutoConfig.from_pretrained(folder).max_position_embeddings == source.max_positions, name
    teacher = resolve_model("smollm2-135m-instruct", rd_hooks)
    tok = AutoTokenizer.from_pretrained(teacher)
    pad = GenerationConfig.from_pretrained(teacher).pad_token_id
    assert pad == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id) and pad is not None
    model = AutoModelForCausalLM.from_pretrained(teacher)  # SmolLM2's weights, not a fresh init
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    inputs = tok(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
