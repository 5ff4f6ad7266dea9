"""The trainer: optimizer settings, and that each method changes exactly the weights it should."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from storage.errors import InvalidArgument
from trainer.dreambooth import TrainConfig
from trainer.errors import InvalidTrainConfig

# XLA fuses and reorders float32 ops, so after six Adam steps its weights differ from the
# eager graph's by rounding noise (5e-6 measured): far below what one step moves them (1e-3).
XLA_ATOL = 5e-5


def test_config_defaults_follow_reference_dreambooth() -> None:
    import keras

    full = TrainConfig(method="full")
    assert full.lr == 2e-6 and TrainConfig(method="lora").lr == 1e-4
    assert (full.empty_prompt_rate, TrainConfig(method="lora").empty_prompt_rate) == (0.25, 0.0)
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


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"method": "half"}, "Unknown training method 'half'"),
        ({"precision": "float8"}, "Unknown precision 'float8'"),
        ({"attention": "flash"}, "Unknown attention 'flash'"),
        ({"method": "full", "train_text_encoder": True}, "only supported with the 'lora'"),
        ({"steps": 0}, "number of training steps must be a whole number"),
        ({"batch_size": -1}, "batch size must be"),
        ({"lora_rank": 2.5}, "LoRA rank must be a whole number"),
        ({"checkpoint_every": 0}, "steps between checkpoints"),
        ({"learning_rate": 0.0}, "learning rate must be a number above 0"),
        ({"learning_rate": float("nan")}, "learning rate"),
        ({"lora_alpha": -1.0}, "LoRA alpha"),
        ({"prior_loss_weight": -0.5}, "prior-preservation loss weight"),
        ({"empty_prompt_rate": 1.5}, "empty-prompt images must be from 0 to 1"),
        ({"empty_prompt_rate": float("nan")}, "empty-prompt images must be from 0 to 1"),
    ],
)
def test_bad_options_are_refused_in_words(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidTrainConfig, match=words) as info:
        TrainConfig(**options)
    assert info.value.code == "invalid_train_config"
    assert isinstance(info.value, InvalidArgument)  # the CLI reports it as a usage error


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


def test_class_rows_drawn_for_the_empty_prompt_train_on_its_images(
    tiny_preset: Any, tiny_data: Any
) -> None:
    """At rate 1 every class row is an empty-prompt image trained with the empty prompt: the same
    losses as a run whose class images and prompt are those, and not the class's."""
    import dataclasses

    from trainer.dreambooth import make_trainer

    config = TrainConfig(
        method="full", steps=2, learning_rate=1e-3, jit_compile=False, empty_prompt_rate=1.0
    )
    plain = dataclasses.replace(config, empty_prompt_rate=0.0)
    as_class = dataclasses.replace(
        tiny_data,
        class_posteriors=tiny_data.empty_posteriors,
        class_context=tiny_data.empty_context,
    )
    anchored = make_trainer(tiny_preset, tiny_data, config).train(tiny_data)
    swapped = make_trainer(tiny_preset, as_class, plain).train(as_class)
    unchanged = make_trainer(tiny_preset, tiny_data, plain).train(tiny_data)
    np.testing.assert_allclose(anchored["prior_loss"], swapped["prior_loss"], rtol=1e-6)
    np.testing.assert_allclose(anchored["instance_loss"], swapped["instance_loss"], rtol=1e-6)
    assert not np.allclose(anchored["prior_loss"], unchanged["prior_loss"], rtol=1e-4)
    no_empties = dataclasses.replace(tiny_data, empty_posteriors=None)
    with pytest.raises(InvalidTrainConfig, match="images the base draws for the empty prompt"):
        make_trainer(tiny_preset, no_empties, config).train(no_empties)


@pytest.mark.slow  # its own trainer (text encoder too) traced, exported and loaded: ~40 s here
def test_text_encoder_lora_trains_and_round_trips(
    tiny_preset: Any, tiny_data: Any, tmp_path: Any
) -> None:
    """LoRA on the text encoder too: its factors change, its base and the shared preset do not."""
    import tensorflow as tf

    from trainer.dreambooth import make_trainer
    from trainer.export import export_model, load_model
    from trainer.lora import lora_variables

    config = TrainConfig(
        method="lora",
        steps=2,
        batch_size=1,
        learning_rate=1e-2,
        train_text_encoder=True,
        jit_compile=False,
    )
    tr = make_trainer(tiny_preset, tiny_data, config)
    text = tr.text_encoder
    assert text is not None and text is not tiny_preset.text_encoder
    before = {v.path: v.numpy().copy() for v in text.weights}
    trained = {id(v) for v in tr.trained_variables}
    assert {id(v) for v in lora_variables(text)} <= trained
    tr.train(tiny_data)
    for var in text.weights:
        moved = not np.array_equal(before[var.path], var.numpy())
        assert moved == ("lora" in var.path), var.path
    for shared, mine in zip(
        tiny_preset.text_encoder.get_weights(),
        [before[v.path] for v in text.weights if "lora" not in v.path],
        strict=True,
    ):
        np.testing.assert_array_equal(shared, mine)

    meta = export_model(
        tr,
        tiny_preset,
        tmp_path,
        identifier="sks",
        class_name="dog",
        instance_prompt="a photo of sks dog",
        steps=2,
    )
    assert meta.text_encoder_lora
    loaded = load_model(tmp_path, base=tiny_preset)
    tokens = tf.constant(tiny_preset.tokenize(["a photo of sks dog"]))
    positions = tf.range(77)[None]
    want = np.asarray(text([tokens, positions]))
    base = np.asarray(tiny_preset.text_encoder([tokens, positions]))
    got = np.asarray(loaded.text_encoder([tokens, positions]))
    assert np.abs(want - base).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=2e-3)


@pytest.mark.slow  # compiling the step with XLA alone takes ~30 s on these CPUs
def test_xla_step_matches_eager(lora_run: Any, tiny_preset: Any, tiny_data: Any) -> None:
    """The one XLA test: the compiled step trains what the plain graph (lora_run) did."""
    import dataclasses

    from trainer.dreambooth import StepCallback, make_trainer

    eager = lora_run.trainer.config
    assert not eager.jit_compile
    tr = make_trainer(tiny_preset, tiny_data, dataclasses.replace(eager, jit_compile=True))
    losses: list[float] = []
    tr.train(tiny_data, callbacks=[StepCallback(lambda step, logs: losses.append(logs["loss"]), 0)])
    np.testing.assert_allclose(losses, lora_run.losses, rtol=1e-5)  # same noise, same batches
    moved = max(np.abs(a - b).max() for a, b in zip(lora_run.after, lora_run.before, strict=True))
    assert moved > 20 * XLA_ATOL
    for got, want in zip(tr.diffusion_model.get_weights(), lora_run.after, strict=True):
        np.testing.assert_allclose(got, want, atol=XLA_ATOL, rtol=0)


def test_device_defaults_follow_the_gpu_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16 from Ampere on, float16 with loss scaling before; remat for full on a GPU; KerasCV's
    convolutions there."""
    from trainer import precision

    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: (8, 6))
    assert precision.device_defaults("lora") == {
        "precision": "mixed_bfloat16",
        "jit_compile": False,
        "attention": "tiled",
        "remat": False,
        "conv": "kerascv",
    }
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: (7, 5))
    full = TrainConfig(method="full")
    assert (full.precision, full.remat) == ("mixed_float16", True)
    assert TrainConfig(method="full", remat=False).remat is False  # an explicit choice wins


def test_in_place_training_trains_the_base_and_releases_the_encoders(
    tiny_data: Any, instance_images: Any
) -> None:
    """No second UNet: the preset's own trains, and the encoders it no longer needs are dropped."""
    from trainer.presets import build_preset
    from trainer.training import TrainJob, run_training

    preset = build_preset("tiny", seed=0)
    unet = preset.diffusion_model
    before = [np.array(w) for w in unet.get_weights()]
    config = TrainConfig(method="full", steps=1, learning_rate=1e-3, jit_compile=False)
    job = TrainJob(identifier="sks", class_name="dog", config=config)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        run_training(preset, job, instance_images, None, out, in_place=True, keep=("decoder",))
    assert preset.diffusion_model is unet
    assert any(np.abs(a - b).max() > 0 for a, b in zip(unet.get_weights(), before, strict=True))
    for part in ("image_encoder", "text_encoder"):
        with pytest.raises(RuntimeError, match=f"{part} was released"):
            getattr(preset, part)(np.zeros((1, 64, 64, 3)))
    assert preset.decoder.count_params() > 0  # kept, as asked
