import pytest

from inference.config import BatchSettings, SettingsError, load_sidecar


def test_without_a_sidecar_the_defaults_apply(tmp_path):
    defaults = BatchSettings(max_batch_size=8)
    assert load_sidecar(tmp_path / "m.json", defaults) is defaults


def test_a_sidecar_overrides_the_batching_of_its_model(tmp_path):
    sidecar = tmp_path / "m.json"
    sidecar.write_text('{"max_batch_size": 4, "max_queue_delay_ms": 0.5}')
    settings = load_sidecar(sidecar, BatchSettings())
    assert (settings.max_batch_size, settings.max_queue_delay_ms) == (4, 0.5)


def test_a_typo_in_a_sidecar_is_an_error_not_a_silent_default(tmp_path):
    sidecar = tmp_path / "m.json"
    sidecar.write_text('{"max_batchsize": 4}')
    with pytest.raises(SettingsError, match="unknown setting.*max_batchsize"):
        load_sidecar(sidecar, BatchSettings())


@pytest.mark.parametrize(
    "text",
    ['{"max_batch_size": 0}', '{"max_batch_size": "8"}', '{"max_queue_delay_ms": -1}', "[1]", "{"],
)
def test_bad_sidecar_values_are_errors(tmp_path, text):
    sidecar = tmp_path / "m.json"
    sidecar.write_text(text)
    with pytest.raises(SettingsError, match="m.json"):
        load_sidecar(sidecar, BatchSettings())
