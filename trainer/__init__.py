"""Everything that needs TensorFlow: presets, data, DreamBooth training, export, sampling.

Keras reads its backend once, at first import, so the package pins it here before anything
imports keras.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__: list[str] = []
