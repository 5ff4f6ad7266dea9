"""One training run's settings: :class:`TrainConfig`, checked on creation, with device defaults.

Imported through :mod:`trainer.dreambooth`, which trains with it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import keras

from storage.rules import DEFAULT_LORA_RANK, DEFAULT_METHOD, DEFAULT_TRAIN_STEPS, Method
from trainer.errors import InvalidTrainConfig
from trainer.precision import device_defaults

__all__ = ["DEFAULT_LR", "EMPTY_PROMPT_RATE_FULL", "TrainConfig"]

Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Attention = Literal["tiled", "kerascv"]
Conv = Literal["matmul", "kerascv"]

# The reference DreamBooth's full fine-tuning rate; LoRA trains far fewer weights and needs more.
DEFAULT_LR: dict[str, float] = {"full": 2e-6, "lora": 1e-4}

# Full fine-tuning moves the whole UNet, and "a photo of sks dog" drags the empty prompt's
# prediction to the subject with it (measured on the tiny base: from 0 to ~0.8-1.6 of the photos'
# colour by 1,000 steps). Guidance at 7.5 then subtracts the subject from every image. So a
# quarter of the class samples are images the base draws for the empty prompt, trained with it:
# prior preservation for the unconditional prediction (tests/trainer/test_learning.py).
EMPTY_PROMPT_RATE_FULL = 0.25

# Options checked in TrainConfig, with the words an error message uses for them.
_WHOLE_NUMBERS = {
    "steps": "The number of training steps",
    "batch_size": "The batch size",
    "lora_rank": "The LoRA rank",
    "checkpoint_every": "The number of steps between checkpoints",
    "optimizer_checkpoint_every": "The number of steps between optimizer checkpoints",
}
_POSITIVE_NUMBERS = {"learning_rate": "The learning rate", "lora_alpha": "The LoRA alpha"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow the reference DreamBooth (AdamW, clip 1.0)."""

    method: Method = DEFAULT_METHOD
    steps: int = DEFAULT_TRAIN_STEPS
    batch_size: int = 1
    learning_rate: float | None = None
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float | None = None
    train_text_encoder: bool = False
    prior_loss_weight: float = 1.0
    # Share of class samples that are the base's own empty-prompt images, trained with the empty
    # prompt, so the unconditional prediction that guidance subtracts stays the base's. Left as
    # None: 0 for LoRA, which does not drift there, and EMPTY_PROMPT_RATE_FULL for full.
    empty_prompt_rate: float | None = None
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 1e-2
    epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # Left as None, these five are chosen for the device this process trains on
    # (:func:`device_defaults`, from figures at real size: bench/memory.py, bench/train_step.py).
    precision: Precision | None = None
    jit_compile: bool | None = None
    attention: Attention | None = None
    remat: bool | None = None
    conv: Conv | None = None
    seed: int = 0
    checkpoint_every: int = 100
    # Full fine-tuning writes its AdamW state (2x the weights) only this often; LoRA writes it
    # with every checkpoint. What a resume then does: trainer/checkpoints/__init__.py.
    optimizer_checkpoint_every: int = 500

    def __post_init__(self) -> None:
        """Fill device defaults; refuse settings that cannot train, naming the option and range."""
        for name, value in device_defaults(self.method).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.empty_prompt_rate is None:
            rate = EMPTY_PROMPT_RATE_FULL if self.method == "full" else 0.0
            object.__setattr__(self, "empty_prompt_rate", rate)
        if self.attention not in ("tiled", "kerascv"):
            raise InvalidTrainConfig(
                f"Unknown attention {self.attention!r}: choose 'tiled' (memory-efficient) or "
                "'kerascv'."
            )
        if self.conv not in ("matmul", "kerascv"):
            raise InvalidTrainConfig(
                f"Unknown convolution {self.conv!r}: choose 'matmul' (small feature maps as one "
                "matrix product) or 'kerascv'."
            )
        if self.method not in ("lora", "full"):
            raise InvalidTrainConfig(
                f"Unknown training method {self.method!r}: choose 'lora' (small, fast) or 'full'."
            )
        if self.precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
            raise InvalidTrainConfig(
                f"Unknown precision {self.precision!r}: choose float32, mixed_float16 or "
                "mixed_bfloat16."
            )
        if self.train_text_encoder and self.method != "lora":
            raise InvalidTrainConfig(
                "Training the text encoder is only supported with the 'lora' method."
            )
        for name, label in _WHOLE_NUMBERS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidTrainConfig(f"{label} must be a whole number from 1 up, not {value}.")
        for name, label in _POSITIVE_NUMBERS.items():
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidTrainConfig(f"{label} must be a number above 0, not {value}.")
        if not (math.isfinite(self.prior_loss_weight) and self.prior_loss_weight >= 0):
            raise InvalidTrainConfig(
                "The prior-preservation loss weight must be 0 (off) or more, not "
                f"{self.prior_loss_weight}."
            )
        if self.empty_prompt_rate is None or not 0 <= self.empty_prompt_rate <= 1:
            raise InvalidTrainConfig(
                "The share of class samples trained on empty-prompt images must be from 0 to 1, "
                f"not {self.empty_prompt_rate}."
            )

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]

    @property
    def dtype_policy(self) -> str | None:
        return None if self.precision == "float32" else self.precision

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """AdamW with global-norm clipping; wrapped for loss scaling under float16."""
        opt: keras.optimizers.Optimizer = keras.optimizers.AdamW(
            learning_rate=self.lr,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            weight_decay=self.weight_decay,
            global_clipnorm=self.max_grad_norm,
        )
        if self.precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        return opt
