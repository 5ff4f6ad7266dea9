"""LoRA helpers on the tiny UNet and text encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainer.errors import LoraMismatch, ModelFormatError
from trainer.lora import apply_lora, attention_projections, extract_lora


def test_projections_are_listed_in_a_stable_order(tiny_preset: Any, lora_run: Any) -> None:
    """Two UNets built separately (the shared base, and the trainer's copy with LoRA enabled)
    carry the same base kernels but different auto-generated layer names; every key must name
    the same structural layer in both, or a LoRA file would land on the wrong projections."""
    base = attention_projections(tiny_preset.diffusion_model)
    copy = attention_projections(lora_run.trainer.diffusion_model)
    assert len(base) == 14 * 4  # self and cross attention in 7 transformer blocks
    assert [k for k, _ in base[:4]] == ["0000.to_q", "0000.to_k", "0000.to_v", "0000.out_proj"]
    assert [k for k, _ in base] == [k for k, _ in copy]
    assert {d.name for _, d in base}.isdisjoint(d.name for _, d in copy)  # names do differ
    for (key, ours), (_, theirs) in zip(base, copy, strict=True):
        np.testing.assert_array_equal(ours._kernel.numpy(), theirs._kernel.numpy(), err_msg=key)
    text = attention_projections(tiny_preset.text_encoder)
    assert len(text) == 2 * 4 and text[0][0] == "0000.q_proj"


def test_extract_picks_only_lora_factors(lora_run: Any) -> None:
    factors = extract_lora(lora_run.trainer.diffusion_model)
    assert len(factors) == 56 * 3
    assert {k.rsplit(".", 1)[1] for k in factors} == {"a", "b", "scale"}
    assert all(v.dtype == np.float16 for k, v in factors.items() if not k.endswith("scale"))
    rank = {v.shape[1] for k, v in factors.items() if k.endswith(".a")}
    assert rank == {4}


def test_apply_rejects_factors_that_do_not_fit_and_changes_nothing(tiny_preset: Any) -> None:
    from trainer.dreambooth import copy_text_encoder

    encoder = copy_text_encoder(tiny_preset)  # a private model: a failed check must not touch it
    before = [np.array(w) for w in encoder.get_weights()]
    fits = {
        "0000.q_proj.a": np.ones((64, 2)),
        "0000.q_proj.b": np.ones((2, 64)),
        "0000.q_proj.scale": 1.0,
    }
    wrong_shape = {
        **fits,
        "0001.q_proj.a": np.zeros((3, 4)),
        "0001.q_proj.b": np.zeros((4, 64)),
        "0001.q_proj.scale": 1.0,
    }
    cases = [
        (wrong_shape, "trained on a different base"),
        ({**fits, "9999.q_proj.a": np.zeros((1, 1))}, "does not have"),
        ({**fits, "0001.q_proj.a": np.zeros((64, 2))}, "incomplete"),
    ]
    for factors, why in cases:
        with pytest.raises(LoraMismatch, match=why) as info:
            apply_lora(encoder, factors)
        assert info.value.code == "lora_mismatch"
        assert isinstance(info.value, ModelFormatError)
    for now, was in zip(encoder.get_weights(), before, strict=True):
        np.testing.assert_array_equal(now, was)
    assert apply_lora(encoder, fits) == 1
    moved = [not np.array_equal(a, b) for a, b in zip(encoder.get_weights(), before, strict=True)]
    assert sum(moved) == 1


def test_lora_a_starts_as_peft_does(tiny_preset: Any) -> None:
    """A is uniform in +-1/sqrt(fan_in) (PEFT's kaiming_uniform(a=sqrt(5))), B is zero."""
    from trainer.dreambooth import copy_diffusion_model
    from trainer.lora import attention_projections, enable_lora

    unet = copy_diffusion_model(tiny_preset)
    enable_lora(unet, 4, seed=0)
    for _, dense in attention_projections(unet):
        a = np.asarray(dense.lora_kernel_a.numpy())
        bound = 1 / np.sqrt(a.shape[0])
        assert np.abs(a).max() <= bound
        assert np.abs(a).max() > 0.8 * bound  # spread over the range, not a narrower init
        assert not np.asarray(dense.lora_kernel_b.numpy()).any()
