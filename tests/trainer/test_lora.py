"""LoRA helpers on the tiny UNet."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainer.lora import apply_lora, attention_projections, extract_lora


def test_projections_are_listed_in_a_stable_order(tiny_preset: Any) -> None:
    found = attention_projections(tiny_preset.diffusion_model)
    assert len(found) == 14 * 4  # self and cross attention in 7 transformer blocks
    assert [k for k, _ in found[:4]] == ["0000.to_q", "0000.to_k", "0000.to_v", "0000.out_proj"]
    assert [k for k, _ in found] == [
        k for k, _ in attention_projections(tiny_preset.diffusion_model)
    ]
    text = attention_projections(tiny_preset.text_encoder)
    assert len(text) == 2 * 4 and text[0][0] == "0000.q_proj"


def test_extract_picks_only_lora_factors(lora_run: Any) -> None:
    factors = extract_lora(lora_run.trainer.diffusion_model)
    assert len(factors) == 56 * 3
    assert {k.rsplit(".", 1)[1] for k in factors} == {"a", "b", "scale"}
    assert all(v.dtype == np.float16 for k, v in factors.items() if not k.endswith("scale"))
    rank = {v.shape[1] for k, v in factors.items() if k.endswith(".a")}
    assert rank == {4}


def test_apply_rejects_factors_that_do_not_fit(tiny_preset: Any) -> None:
    bad = {
        "0000.to_q.a": np.zeros((3, 4)),
        "0000.to_q.b": np.zeros((4, 32)),
        "0000.to_q.scale": 1.0,
    }
    with pytest.raises(ValueError, match="shape"):
        apply_lora(tiny_preset.diffusion_model, bad)
    with pytest.raises(ValueError, match="lacks"):
        apply_lora(tiny_preset.diffusion_model, {"9999.to_q.a": np.zeros((1, 1))})
