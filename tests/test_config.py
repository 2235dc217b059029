"""`KERASFIX` values and mode names: no Keras needed."""

import pytest

from kerasfix import _config


@pytest.mark.parametrize("value", [None, "", "0", "off", "false", "OFF", " False "])
def test_off_values_leave_kerasfix_inactive(value):
    env = {} if value is None else {"KERASFIX": value}
    assert _config.mode_from_env(env) is None


@pytest.mark.parametrize("value", ["1", "on", "true", "unweighted", "TRUE"])
def test_on_values_mean_keras2_semantics(value):
    assert _config.mode_from_env({"KERASFIX": value}) == "unweighted"


def test_weighted_value_means_keras_3_5_semantics():
    assert _config.mode_from_env({"KERASFIX": "weighted"}) == "weighted"


@pytest.mark.parametrize("value", ["yes", "2", "raw", "weigthed"])
def test_other_values_raise_naming_variable_value_and_choices(value):
    with pytest.raises(ValueError) as error:
        _config.mode_from_env({"KERASFIX": value})
    message = str(error.value)
    assert "KERASFIX" in message and repr(value) in message
    for allowed in ("0", "1", "unweighted", "weighted"):
        assert allowed in message


def test_unknown_mode_name_is_rejected():
    with pytest.raises(ValueError, match="'raw'"):
        _config.check_mode("raw")


@pytest.mark.parametrize(
    "value,strict",
    [("1", True), ("true", True), ("ON", True), ("0", False), ("off", False), ("", False)],
)
def test_strict_variable_takes_kerasfix_on_off_words(value, strict):
    assert _config.strict_from_env({"KERASFIX_STRICT": value}) is strict
    assert _config.strict_from_env({}) is False


@pytest.mark.parametrize("value", ["yes", "2", "unweighted", "strict"])
def test_other_strict_values_raise_naming_variable_value_and_choices(value):
    with pytest.raises(ValueError) as error:
        _config.strict_from_env({"KERASFIX_STRICT": value})
    message = str(error.value)
    assert "KERASFIX_STRICT" in message and repr(value) in message
    for allowed in ("0", "1", "on", "off"):
        assert allowed in message
