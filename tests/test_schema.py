"""docs/run_directory.schema.json: config.json's rules for readers outside lira, generated from
the checks lira applies (lira.run.record_types), kept in sync, and agreeing with them."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from helpers import tiny_image_run_config

from lira.run import importer, layout, record_types
from lira.stages import train

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "run_directory.schema.json"


def test_the_committed_schema_is_the_generated_one():
    assert json.loads(SCHEMA.read_text()) == record_types.json_schema(), (
        "docs/run_directory.schema.json is stale: python -m lira.run.record_types"
    )


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """config.json of a run lira trained and of one imported."""
    root = tmp_path_factory.mktemp("runs")
    train.train(
        root / "trained",
        tiny_image_run_config(root, num_models=2, models_per_step=2).replace(epochs=1),
        progress=False,
    )
    rng = np.random.default_rng(0)
    keep = np.arange(4)[:, None] % 2 == np.arange(10) % 2
    importer.import_run(root / "imported", rng.normal(size=(4, 10, 3)), keep, rng.integers(0, 3, 10))
    return [json.loads((root / name / layout.CONFIG).read_text()) for name in ("trained", "imported")]


def test_real_records_validate(records):
    for record in records:
        jsonschema.validate(record, record_types.json_schema())
        assert record_types.problems(record) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["flags"].update(epochs="abc"),
        lambda r: r["flags"].update(pool_size=2.5),
        lambda r: r["data"].update(num_classes="10"),
        lambda r: r.update(inference={"queries": "two"}),
        lambda r: r.update(files={"keep.npy": 3}),
    ],
)
def test_the_schema_and_lira_refuse_the_same_records(records, change):
    record = json.loads(json.dumps(records[0]))
    change(record)
    assert record_types.problems(record)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, record_types.json_schema())
