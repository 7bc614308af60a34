"""Issue 25 item 7: a run table as people write it (spaces after commas, a byte-order mark,
blank lines, quoted cells) is read as pandas reads it with its defaults, or refused with
file:line; a value that cannot be a loss is refused."""

import math

import numpy as np
import pytest

from mixjax.mixing.runs import RunTableError, read_run_table

CLEAN = (
    "tokens.if,tokens.math,tokens.code,loss.if,loss.math,loss.code\n"
    "100,100,100,2.5,2.4,2.3\n"
    "200,100,100,2.4,2.41,2.31\n"
)


def _table(tmp_path, text: str, name: str = "runs.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_run_table(path)


def _same(a, b) -> None:
    assert a.domains == b.domains
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.losses, b.losses)


def test_a_space_after_the_comma_names_the_same_column(tmp_path):
    spaced = _table(tmp_path, CLEAN.replace(",", ", "), "spaced.csv")
    _same(spaced, _table(tmp_path, CLEAN))
    assert spaced.measured.tolist() == [True, True, True]  # on main: code "trained, never measured"
    assert spaced.losses[1, 2] == 2.31


def test_byte_order_mark_blank_lines_and_quotes_change_nothing(tmp_path):
    messy = "\ufeff" + CLEAN.replace("\n2", "\n\n\"2\"").replace("2.3\n", "2.3\r\n")
    table = _table(tmp_path, messy, "messy.csv")
    _same(table, _table(tmp_path, CLEAN))
    assert table.lines == (2, 4)  # the file's own line numbers, blank line counted


def test_padded_cells_read_as_numbers(tmp_path):
    table = _table(tmp_path, CLEAN.replace("2.4,2.41", " 2.4 , 2.41 "), "padded.csv")
    assert table.losses[1, :2].tolist() == [2.4, 2.41]


@pytest.mark.parametrize("bad, why", [("-0.5", "must be a finite number >= 0"), ("inf", "must be a finite number >= 0"),
                                      ("NaN", "is NaN"), ("abc", "is not a number")])
def test_a_value_that_cannot_be_a_loss_is_refused_with_file_and_line(tmp_path, bad, why):
    with pytest.raises(RunTableError, match=rf"runs.csv:3: loss.math {why}") as err:
        _table(tmp_path, CLEAN.replace("2.41", bad))
    assert "\n" not in str(err.value)


def test_a_repeated_column_is_refused(tmp_path):
    with pytest.raises(RunTableError, match=r"runs.csv:1: column 'loss.code' appears twice"):
        _table(tmp_path, CLEAN.replace("loss.code\n", "loss.code, loss.code\n").replace("2.3\n", "2.3,2.3\n"))


def test_a_row_longer_than_the_header_is_refused(tmp_path):
    with pytest.raises(RunTableError, match=r"runs.csv:2: 7 cells but the header has 6 columns"):
        _table(tmp_path, CLEAN.replace("2.3\n", "2.3,9\n"))


def test_a_short_row_leaves_its_loss_unmeasured(tmp_path):
    table = _table(tmp_path, CLEAN.replace(",2.31\n", "\n"))  # pandas: NaN
    assert math.isnan(table.losses[1, 2]) and table.losses[0, 2] == 2.3


def test_jsonl_keys_are_stripped_and_non_objects_refused(tmp_path):
    (tmp_path / "runs.jsonl").write_text('{"tokens.a": 1, " tokens.b": 2, "loss.a": 2.0, "loss.b ": 2.5}\n[1]\n')
    with pytest.raises(RunTableError, match=r"runs.jsonl:2: a row must be a JSON object"):
        read_run_table(tmp_path / "runs.jsonl")
    (tmp_path / "ok.jsonl").write_text('{"tokens.a": 1, " tokens.b": 2, "loss.a": 2.0, "loss.b ": 2.5}\n')
    table = read_run_table(tmp_path / "ok.jsonl")
    assert table.domains == ("a", "b") and table.losses.tolist() == [[2.0, 2.5]]


def test_the_fit_of_a_spaced_table_is_the_fit_of_the_clean_one(tmp_path, capsys, monkeypatch):
    import json
    from pathlib import Path

    from mixjax.fit import main

    monkeypatch.setenv("MIXJAX_CACHE_DIR", "")
    example = Path(__file__).parents[1] / "examples" / "paper_worked_example.csv"
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(example.read_text().replace(",", ", "))
    weights = []
    for path in (example, spaced):
        assert main(["--runs", str(path), "--budget", "20", "--json", "--grid-step", "0"]) == 0
        weights.append(json.loads(capsys.readouterr().out)["weights"]["20"])
    assert weights[1] == weights[0]  # main: other weights, code "trained, never measured"


def test_a_short_first_row_keeps_the_later_columns(tmp_path):
    """The columns are the header's: a first row with its trailing loss cells left out
    (not measured) must not drop those columns (here a target's) from the table."""
    path = tmp_path / "runs.csv"
    path.write_text("tokens.a,tokens.b,loss.a,loss.b,loss.t\n1,1,2.0,2.0\n2,1,1.9,2.1,3.0\n1,2,2.1,1.9,3.1\n")
    table = read_run_table(path)
    assert table.targets == ("t",) and np.isnan(table.losses[0, 2]) and table.losses[1:, 2].tolist() == [3.0, 3.1]
