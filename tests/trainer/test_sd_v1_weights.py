"""sd-v1 from WEIGHTS_DIR: KerasCV's file names and format load into the real-size models.

No real weights can be downloaded here, so the files are written from randomly initialised
KerasCV models in the legacy HDF5 layout KerasCV's own files use, with a marked first variable,
then loaded through the preset exactly as a user's WEIGHTS_DIR is. Real size: about 4.3 GB of
float32 on disk and in memory, a couple of minutes on a small CPU.
"""

from __future__ import annotations

import gc
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Real-size models: gigabytes and minutes, so only in `make ci`.
pytestmark = pytest.mark.slow

MODELS = ("diffusion_model", "image_encoder", "decoder", "text_encoder")


def _fingerprint(model: Any) -> list[tuple[int, float]]:
    """Size and sum of every weight: a checksum that keeps no copy of 1 B parameters."""
    out = []
    for v in model.weights:
        value = v.numpy()  # one copy of one weight at a time
        out.append((value.size, round(float(value.sum(dtype=np.float64)), 3)))
    return out


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from trainer.presets import build_preset
    from trainer.presets.sd_v1 import SD_V1_FILES
    from trainer.presets.tokenizer import tiny_bpe_path

    folder = tmp_path_factory.mktemp("sd-v1-weights")
    source = build_preset("sd-v1", resolution=128, random_weights=True, bpe_path=tiny_bpe_path())
    prints = {}
    for i, key in enumerate(MODELS):
        model = getattr(source, key)
        first = model.weights[0]
        first.assign(np.full(first.shape, 0.125 * (i + 1), np.float32))  # no init draws this
        with h5py.File(folder / SD_V1_FILES[key], "w") as fh, warnings.catch_warnings():
            # Keras' legacy writer trips numpy 2's __array__(copy=...) notice once per weight
            warnings.simplefilter("ignore", DeprecationWarning)
            legacy_h5_format.save_weights_to_hdf5_group(fh, model)
        prints[key] = _fingerprint(model)
    shutil.copy(tiny_bpe_path(), folder / SD_V1_FILES["bpe"])
    del source, model, first
    gc.collect()
    return folder, prints


def test_sd_v1_loads_every_model_from_weights_dir(weights_dir: tuple[Path, Any]) -> None:
    from trainer.presets import build_preset

    folder, prints = weights_dir
    loaded = build_preset("sd-v1", resolution=128, weights_dir=folder)  # BPE found there too
    for key in MODELS:
        assert _fingerprint(getattr(loaded, key)) == prints[key], key
    assert loaded.weights_id.startswith("sd-v1-") and loaded.weights_id != "sd-v1-random"
    assert loaded.tokenizer.encode("a photo of sks dog")  # the vocab came from WEIGHTS_DIR


def test_a_wrong_weight_file_is_named(weights_dir: tuple[Path, Any], tmp_path: Path) -> None:
    from trainer.errors import WeightsNotFound
    from trainer.presets import build_preset
    from trainer.presets.sd_v1 import SD_V1_FILES

    folder, _ = weights_dir
    broken = tmp_path / "weights"
    broken.mkdir()
    for name in SD_V1_FILES.values():
        (broken / name).symlink_to(folder / name)
    # a truncated download: refused before any model is built
    (broken / SD_V1_FILES["decoder"]).unlink()
    (broken / SD_V1_FILES["decoder"]).write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WeightsNotFound, match=r"kcv_decoder\.h5 .*not KerasCV"):
        build_preset("sd-v1", resolution=128, weights_dir=broken)
    # the right format but another model's weights (files swapped by hand)
    (broken / SD_V1_FILES["decoder"]).unlink()
    (broken / SD_V1_FILES["decoder"]).symlink_to(folder / SD_V1_FILES["image_encoder"])
    with pytest.raises(WeightsNotFound, match=r"kcv_decoder\.h5 .*not KerasCV"):
        build_preset("sd-v1", resolution=128, weights_dir=broken)
