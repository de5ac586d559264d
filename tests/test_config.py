"""Strict configs: typos are errors with suggestions; TOML round-trips; SNR grammar."""

import math

import pytest

from noisydeq.config import (
    NoiseSpec,
    build,
    dump_toml,
    load_toml,
    loads_toml,
    parse_snr_range,
)
from noisydeq.errors import NoisyDEQError
from noisydeq.store import atomic_write_text


def test_misspelt_key_is_an_error_with_suggestion():
    with pytest.raises(NoisyDEQError, match="did you mean 'snr_db'"):
        build(NoiseSpec, {"snr_bd": 3})


def test_bad_literal_names_allowed_values():
    with pytest.raises(NoisyDEQError, match="site"):
        build(NoiseSpec, {"site": "everywhere"})


def test_toml_round_trip_is_exact(tmp_path):
    spec = NoiseSpec(site="signal", snr_db=10.0, kind="multiplicative")
    path = dump_toml(spec, tmp_path / "noise.toml")
    assert load_toml(NoiseSpec, path) == spec
    inf_spec = NoiseSpec(site="state")
    assert loads_toml(NoiseSpec, dump_toml(inf_spec, tmp_path / "n2.toml").read_text()) == inf_spec


def test_missing_and_invalid_toml_are_clear(tmp_path):
    with pytest.raises(NoisyDEQError, match="file not found"):
        load_toml(NoiseSpec, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("site = [")
    with pytest.raises(NoisyDEQError, match="not valid TOML"):
        load_toml(NoiseSpec, bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0:30", [float(i) for i in range(31)]),
        ("0:30:10", [0.0, 10.0, 20.0, 30.0]),
        ("0,10,20,inf", [0.0, 10.0, 20.0, math.inf]),
        ("-10:0:5,inf", [-10.0, -5.0, 0.0, math.inf]),
        ("0:1:0.5", [0.0, 0.5, 1.0]),
    ],
)
def test_snr_grid_grammar(text, expected):
    assert parse_snr_range(text) == expected


@pytest.mark.parametrize("text", ["30:0", "0:30:0", "0:30:-2", "abc", "", "0:inf", "1,,2", "nan"])
def test_bad_snr_grids_are_one_clear_error(text):
    with pytest.raises(NoisyDEQError):
        parse_snr_range(text)


@pytest.mark.parametrize("text, rest", [
    ("0,0", "0 is given twice (each value once)"),
    ("0:10:5,5", "5 is given twice (each value once)"),
    ("0:30:0", "range '0:30:0': step must be positive, got 0"),
    ("1,,2", "'1,,2' has an empty item"),
    ("abc", "SNR value 'abc' is not a number of dB or 'inf'"),
])
def test_an_snr_grid_error_names_its_option_once(text, rest):
    """``--snr: snr_db '0,0': ...`` named the option twice when a spec's field parsed the
    grid; now the parser's own message names none (the caller does, once), as
    ``refuse_repeats``' does."""
    from noisydeq.specs.noise import snr_list

    with pytest.raises(NoisyDEQError) as err:
        parse_snr_range(text, "--accuracy-snr")
    assert str(err.value) == f"--accuracy-snr: {rest}"
    with pytest.raises(ValueError) as verr:
        snr_list(text)
    assert str(verr.value) == rest


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_coerce_accepts_spec_dict_or_none_and_names_bad_types():
    from noisydeq.config import coerce

    assert coerce(NoiseSpec, None, "noise") == NoiseSpec()
    spec = NoiseSpec(site="state", snr_db=3.0)
    assert coerce(NoiseSpec, spec, "noise") is spec
    assert coerce(NoiseSpec, {"site": "state", "snr_db": 3.0}, "noise") == spec
    with pytest.raises(NoisyDEQError, match="did you mean 'snr_db'"):
        coerce(NoiseSpec, {"snr": 3.0}, "noise")
    with pytest.raises(NoisyDEQError, match="noise: expected a NoiseSpec or dict, got int"):
        coerce(NoiseSpec, 3, "noise")


@pytest.mark.parametrize("value,expected", [
    ("5,3, 1 ", [1, 3, 5]), (3, [3]), (["2", 3.0], [2, 3]),
])
def test_depth_lists_share_the_comma_grammar(value, expected):
    from noisydeq.specs.family import parse_depths

    assert parse_depths(value) == expected


@pytest.mark.parametrize("value,needle", [
    ("1,,3", "depth '' is not a positive integer"), ("inf", "depth 'inf' is not a positive"),
    ("1e999", "depth '1e999' is not a positive"), (1.5, "depths must be a non-empty list"),
    ([], "depths must be a non-empty list"), ("1,0", "depth '0' is not"),
    ("5,3, 1 ,3", "3 is given twice"), (["2", 2.0], "2 is given twice"),  # were dropped
])
def test_bad_depth_lists_are_one_value_error(value, needle):
    """``inf`` / ``1e999`` were an OverflowError (an internal error on the command line)."""
    from noisydeq.specs.family import parse_depths

    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        parse_depths(value)


@pytest.mark.parametrize("value,expected", [
    (" 0.2 , 0.1 ,,", [0.1, 0.2]), (0.3, [0.3]), ([0, "0.5"], [0.0, 0.5]),
])
def test_radius_lists_share_the_comma_grammar(value, expected):
    from noisydeq.specs.certify import CertifySpec

    assert CertifySpec(eps=value).eps == expected


@pytest.mark.parametrize("value,needle", [
    ("0. 1", "'0. 1' is not a number"), ("-1", "ε must be ≥ 0"), ("nan", "ε must be ≥ 0"),
    ("0.1,1.5", r"ε 1.5 is outside \[0, 1\]"),
    ("", "non-empty list of radii"), (True, "non-empty list of radii"),
    (" 0.2 , 0.1 ,,0.20,", "0.2 is given twice"),  # was dropped
])
def test_bad_radius_lists_are_one_error(value, needle):
    from noisydeq.specs.base import build
    from noisydeq.specs.certify import CertifySpec

    with pytest.raises(NoisyDEQError, match=needle):
        build(CertifySpec, {"eps": value}, where="certify")
