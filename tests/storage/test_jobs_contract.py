"""The queue contract round-trips and refuses malformed data; it never needs TensorFlow."""

from __future__ import annotations

from typing import Any

import pytest

from storage.errors import InvalidArgument, StorageError
from storage.jobs import (
    GENERATE_FUNCTION,
    GENERATE_QUEUE,
    TRAIN_FUNCTION,
    TRAIN_QUEUE,
    GenerateSpec,
    Progress,
    TrainResult,
    TrainSpec,
    progress_key,
    queue_for,
    spec_key,
)


def test_specs_and_results_round_trip() -> None:
    spec = TrainSpec("j1", "m1", ["photos/j1/000-ab.png"], "dog", "sks", steps=10)
    assert TrainSpec.from_json(spec.to_json()) == spec
    gen = GenerateSpec("j2", "a photo of sks dog", seeds=[1, 2])
    assert GenerateSpec.from_json(gen.to_json()) == gen
    res = TrainResult("j1", "m1", "models/m1/", ["lora.h5"], "0" * 64, 10, 10, 0.1, 3.5)
    assert TrainResult.from_json(res.to_json().encode()) == res


@pytest.mark.parametrize("text", ["{", "[]", '{"job_id": "j", "surprise": 1}', '{"job_id": 1}'])
def test_malformed_payloads_raise_storage_error(text: str) -> None:
    with pytest.raises(StorageError):
        TrainSpec.from_json(text)


def test_names_keys_and_progress() -> None:
    assert queue_for(TRAIN_FUNCTION) == TRAIN_QUEUE
    assert queue_for(GENERATE_FUNCTION) == GENERATE_QUEUE
    with pytest.raises(StorageError):
        queue_for("rm_rf")
    assert progress_key("j1") == "dreambot:progress:j1"
    assert spec_key("j1") == "jobs/j1/spec.json"
    with pytest.raises(StorageError):
        spec_key("../j1")
    assert Progress("j", "training", step=5, total=20).fraction == 0.25
    assert Progress("j", "queued").fraction == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_name": "golden retriever"}, "not a valid class word"),
        ({"identifier": "SKS"}, "identifier 'SKS' must be lower case"),
        ({"method": "half"}, "method must be one of lora, full"),
        ({"steps": 0}, "steps must be 1 to"),
        ({"seed": -1}, "seed must be 0 to"),
    ],
)
def test_a_spec_that_breaks_a_shared_rule_is_refused(change: dict[str, Any], message: str) -> None:
    fields = {"job_id": "j", "model_id": "m", "photo_keys": [], "class_name": "golden-retriever"}
    TrainSpec.from_dict({**fields, "identifier": "sks"})  # the hyphenated class word is fine
    with pytest.raises(InvalidArgument, match=message):
        TrainSpec.from_dict({**fields, "identifier": "sks", **change})
    with pytest.raises(InvalidArgument, match="the number of images must be 1 to 4"):
        GenerateSpec("g", "a photo of sks dog", n_images=5)
