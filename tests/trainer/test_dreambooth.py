"""The trainer: optimizer settings, and that each mode changes exactly the weights it should."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainer.dreambooth import TrainConfig


def test_config_defaults_follow_reference_dreambooth() -> None:
    import keras

    full = TrainConfig(mode="full")
    assert full.lr == 2e-6 and TrainConfig(mode="lora").lr == 1e-4
    opt = full.make_optimizer()
    assert isinstance(opt, keras.optimizers.AdamW)
    assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.9, 0.999, 1e-8)
    assert opt.weight_decay == pytest.approx(1e-2)
    assert opt.global_clipnorm == 1.0
    scaled = TrainConfig(precision="mixed_float16").make_optimizer()
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert (
        TrainConfig(precision="mixed_bfloat16").make_optimizer().__class__ is keras.optimizers.AdamW
    )
    with pytest.raises(ValueError):
        TrainConfig(mode="half")  # type: ignore[arg-type]


def _changed(run: Any) -> dict[str, bool]:
    weights = run.trainer.diffusion_model.weights
    return {
        w.path: not np.array_equal(a, b)
        for w, a, b in zip(weights, run.before, run.after, strict=True)
    }


def test_lora_changes_only_lora_weights(lora_run: Any, tiny_preset: Any) -> None:
    changed = _changed(lora_run)
    lora = {p: c for p, c in changed.items() if "lora" in p}
    base = {p: c for p, c in changed.items() if "lora" not in p}
    # A and B on q, k, v, out of 14 attention layers (self and cross, 7 transformer blocks)
    assert len(lora) == 2 * 4 * 14
    assert all(lora.values()), [p for p, c in lora.items() if not c]
    assert not any(base.values()), [p for p, c in base.items() if c]
    assert all(np.isfinite(lora_run.losses)) and len(lora_run.losses) == 6


def test_full_changes_every_unet_weight_and_not_the_base(full_run: Any, tiny_preset: Any) -> None:
    changed = _changed(full_run)
    assert changed and all(changed.values()), [p for p, c in changed.items() if not c]
    assert full_run.trainer.diffusion_model is not tiny_preset.diffusion_model
    for base, before in zip(
        tiny_preset.diffusion_model.get_weights(), full_run.before, strict=True
    ):
        np.testing.assert_array_equal(base, before)


def test_steps_are_deterministic(lora_run: Any, tiny_data: Any) -> None:
    """Noise, timesteps and batches are keyed on (seed, step): the same step gives the same loss."""
    from trainer.data import make_dataset

    tr = lora_run.trainer
    batch = next(iter(make_dataset(tiny_data, 1)))
    first = tr._noisy_inputs(batch)
    again = tr._noisy_inputs(batch)
    for a, b in zip(first[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
