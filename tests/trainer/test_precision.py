"""Mixed precision: the UNet computes in half precision and LoRA still trains with a finite loss."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from trainer.dreambooth import TrainConfig, make_trainer

# A fresh trainer traced per precision (~20 s each here): only in `make ci`.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("precision", "compute"), [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_lora_trains_with_finite_loss(
    tiny_preset: Any, tiny_data: Any, precision: str, compute: str
) -> None:
    config = TrainConfig(
        method="lora",
        steps=4,
        batch_size=1,
        precision=precision,  # type: ignore[arg-type]
        seed=5,
        jit_compile=False,
    )
    trainer = make_trainer(tiny_preset, tiny_data, config)
    dtypes = {layer.compute_dtype for layer in trainer.diffusion_model.layers if layer.weights}
    assert compute in dtypes
    scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    before = [np.array(v.numpy()) for v in trainer.trained_variables]
    history = trainer.train(tiny_data)
    assert history["loss"] and np.all(np.isfinite(history["loss"]))
    after = [np.array(v.numpy()) for v in trainer.trained_variables]
    assert all(v.dtype == np.float32 for v in after)  # master weights stay float32
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == len(before)
    # The frozen base is stored in half precision (no float32 master copy), the shared
    # preset's own UNet is untouched.
    frozen = {str(v.dtype) for v in trainer.diffusion_model.weights if "lora" not in v.path}
    assert frozen == {compute}
    assert {str(v.dtype) for v in tiny_preset.diffusion_model.weights} == {"float32"}
