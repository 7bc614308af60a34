"""Issue 25 items 5-6: a config file's values are checked like ``--set`` (one line naming the
file, line, field, value and type; exit 2), a misspelt field names the fields there are,
and a domain without validation examples is refused before any tokenisation."""

from pathlib import Path

import pytest

from mixjax.data.domain import DomainSpec, load_domains
from mixjax.data.formats import DataError
from mixjax.data.tokenizer import load_tokenizer
from mixjax.pipeline.config import ConfigError, load_config, validate
from mixjax.run import main

TINY = Path(__file__).parent / "fixtures" / "tiny_config.py"


def _config(tmp_path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text
    path = tmp_path / "config.py"
    path.write_text(text.replace(old, new, 1))
    return path


def _line(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), start=1) if needle in t)


def test_strings_that_are_numbers_are_converted_as_set_converts_them(tmp_path):
    path = _config(tmp_path, "base_tokens=", "base_tokens='2000' or ")  # '2000' (a str)
    config = load_config(path)
    assert config.base_tokens == 2000 and isinstance(config.base_tokens, int)  # main: '2000', then "'<=' not supported"


def test_learning_rate_as_a_string(tmp_path):
    path = _config(tmp_path, "learning_rate=3e-3", "learning_rate='2e-5'")  # main: a 35-line traceback
    assert load_config(path).train.optimizer.learning_rate == 2e-5


def test_a_value_of_the_wrong_type_is_one_line_with_file_and_line(tmp_path, capsys):
    path = _config(tmp_path, "base_tokens=", "base_tokens='lots' or ")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{_line(path, 'base_tokens=')}: base_tokens='lots': expected int")
    assert main(["--config", str(path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_misspelt_field_names_the_fields_there_are(tmp_path, capsys):
    path = _config(tmp_path, "train=TrainConfig(", "train=TrainConfig(seq_length=64, ")
    assert main(["--config", str(path)]) == 2  # main: a 17-line traceback
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{path}:{_line(path, 'seq_length')}: TrainConfig has no field 'seq_length' (did you mean 'seq_len'?" in err


def test_an_error_in_the_config_file_is_one_line(tmp_path, capsys):
    path = _config(tmp_path, "base_tokens=", "base_tokens=1 / 0 + ")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mixjax.run: error: {path}:{_line(path, 'base_tokens=')}: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("field, value, message", [
    ("lower", "{'math': -0.5}", "lower.math=-0.5: expected a finite number in [0, 1]"),
    ("upper", "{'math': float('nan')}", "upper.math=nan: expected a finite number in [0, 1]"),
    ("importance", "{'math': -1.0}", "importance.math=-1.0: expected a finite number in [0, inf)"),
])
def test_per_domain_values_of_a_config_are_checked(tmp_path, field, value, message):
    path = _config(tmp_path, "base_tokens=", f"{field}={value}, base_tokens=")
    with pytest.raises(ConfigError) as err:
        validate(load_config(path), device_count=1)
    assert message in str(err.value)


def test_a_domain_without_validation_examples_is_refused_at_config_validation(tmp_path):
    config = load_config(TINY)
    import dataclasses

    empty = dataclasses.replace(config, domains=(dataclasses.replace(config.domains[0], val_examples=0), *config.domains[1:]))
    with pytest.raises(ConfigError, match=rf"{config.domains[0].name}.val_examples=0: expected an int >= 1"):
        validate(empty, device_count=1)  # main: accepted; every run failed "non-finite eval loss (nan) at step 1"


def test_loading_a_domain_without_validation_examples_is_a_data_error():
    specs = [DomainSpec("a", ("synthetic:math:40",), val_examples=0), DomainSpec("b", ("synthetic:code:40",))]
    with pytest.raises(DataError, match=r"domain a: no validation examples \(val_examples=0\)"):
        load_domains(specs, load_tokenizer("byte"), 256)
