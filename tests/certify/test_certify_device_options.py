"""The envelope settings of ``noisydeq certify`` (``--chip``, ``--coverage``, ``--k``,
``--dynamic``, ``--read-noise-k``) shape only a device's envelope: without ``--device`` they
change nothing. ``--chip``, ``--dynamic`` and ``--read-noise-k`` were refused then, while
``--coverage`` and ``--k`` were accepted and did nothing; now each is refused in one line
naming it and ``--device`` — on the command line, in an experiment file's ``[certify]``
table (as the file loads) and by the Python API (:func:`noisydeq.analysis.certified.plan`).
Nothing is written; a run without them keeps its cells (their keys: test_certify_resume)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.certify import CertifySpec, check_device_options
from tests.certify.helpers import run_certify, small_model
from tests.cli_helpers import one_line_error


@pytest.mark.parametrize("argv, named", [
    (["--coverage", "0.9"], "--coverage needs"),
    (["--coverage", "0.99"], "--coverage needs"),  # the default's value, given: still refused
    (["--k", "1"], "--k needs"),
    (["--chip", "0"], "--chip needs"),  # chip 0 is a chip
    (["--dynamic"], "--dynamic needs"),
    (["--read-noise-k", "2"], "--read-noise-k needs"),
    (["--k", "1", "--dynamic"], "--k, --dynamic need"),
])
def test_an_envelope_option_without_device_is_one_line_naming_it(capsys, tmp_path, argv,
                                                                  named):
    out = tmp_path / "out"
    (tmp_path / "fam").mkdir()
    code, _, err = run_certify(capsys, str(tmp_path / "fam"), "--out", str(out), *argv)
    one_line_error(code, err, f"error: {named} --device: ",
                   "only the digital weights are certified")
    assert not out.exists()


def test_a_bad_value_is_still_named_before_the_missing_device(capsys, tmp_path):
    """The value's own check comes first (the click-tree fuzz gives ``--k nan``)."""
    (tmp_path / "fam").mkdir()
    code, _, err = run_certify(capsys, str(tmp_path / "fam"), "--k", "nan")
    one_line_error(code, err, "--k")
    assert "needs --device" not in err


def test_the_defaults_and_a_device_pass():
    check_device_options(CertifySpec())
    check_device_options(CertifySpec(eps=[0.1], dynamic=False, chip=None))  # off: not given
    for spec in (CertifySpec(device="rram", coverage=0.9), CertifySpec(device="rram", k=1.0),
                 CertifySpec(device="rram", chip=0, dynamic=True, read_k=3.0)):
        check_device_options(spec)


def test_the_python_api_refuses_them_before_any_work():
    member = SimpleNamespace(model=small_model())
    x = torch.rand(4, 16, dtype=torch.float64)
    from noisydeq.analysis.certified import plan

    for spec, named in ((CertifySpec(coverage=0.99), "coverage needs device"),
                        (CertifySpec(k=2.0), "k needs device"),
                        (CertifySpec(chip=1, read_k=2.0), "chip, read_k need device")):
        with pytest.raises(NoisyDEQError, match=named):
            plan(member, spec, x)
    assert len(plan(member, CertifySpec(), x)) == 1  # the digital row alone


TABLE = 'name = "t2"\nkind = "table2"\n[family]\ntask = "digits"\n[certify]\neps = [0.1]\n'


@pytest.mark.parametrize("extra, named", [
    ("coverage = 0.9\n", "[certify] coverage needs"),
    ("k = 1.0\nchip = 2\n", "[certify] chip, [certify] k need"),
    ("[quick.certify]\nk = 1.0\n", "[quick.certify] k needs"),
])
def test_an_experiment_file_s_envelope_setting_without_device_is_refused_as_it_loads(
        capsys, tmp_path, monkeypatch, extra, named):
    from noisydeq import families

    monkeypatch.setattr(families, "train_family", lambda *a, **k: pytest.fail("trained"))
    exp = tmp_path / "t2.toml"
    exp.write_text(TABLE + extra, encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"), "--quiet")
    one_line_error(code, err, f"{exp}: {named} a device (its key device): ",
                   "only the digital weights are certified")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.toml"]


def test_an_experiment_takes_them_with_its_own_or_the_command_line_s_device(
        capsys, tmp_path, monkeypatch):
    from noisydeq.analysis import certify_experiments
    from noisydeq.analysis.certify_run import CertifyResult

    seen = []
    monkeypatch.setattr(certify_experiments, "run_table2", lambda exp, out, **kw: seen.append(
        exp.certify) or CertifyResult([], []))
    exp = tmp_path / "t2.toml"
    exp.write_text(TABLE + 'device = "rram"\ncoverage = 0.9\n', encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "a"), "--quiet",
                               "--k", "1")
    assert code == 0, err
    plain = tmp_path / "plain.toml"
    plain.write_text(TABLE, encoding="utf-8")
    code, _, err = run_certify(capsys, str(plain), "--out", str(tmp_path / "b"), "--quiet",
                               "--device", "rram", "--coverage", "0.9")
    assert code == 0, err
    assert seen == [{"eps": [0.1], "device": "rram", "coverage": 0.9, "k": 1.0},
                    {"eps": [0.1], "device": "rram", "coverage": 0.9}]
    # the command line's option without any device: refused, naming the option
    code, _, err = run_certify(capsys, str(plain), "--out", str(tmp_path / "c"), "--quiet",
                               "--k", "1")
    one_line_error(code, err, "--k needs --device: ")
    assert len(seen) == 2 and not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, named", [
    (["--coverage", "0.9"], "--coverage with --chip: it shapes"),
    (["--coverage", "0.99"], "--coverage with --chip: it shapes"),  # the default's value
    (["--k", "1"], "--k with --chip: it shapes"),
    (["--k", "1", "--coverage", "0.9", "--dynamic"], "--coverage, --k with --chip: they"),
])
def test_coverage_or_k_beside_a_measured_chip_is_one_line(capsys, tmp_path, argv, named):
    """A measured chip's envelope (``--chip``) is the chip's own error: ``--coverage`` and
    ``--k`` shape only the model envelope, and were accepted beside it, changing nothing."""
    out = tmp_path / "out"
    (tmp_path / "fam").mkdir()
    code, _, err = run_certify(capsys, str(tmp_path / "fam"), "--out", str(out),
                               "--device", "rram", "--chip", "0", *argv)
    one_line_error(code, err, f"error: {named}", "a measured chip's envelope is the chip's "
                   "own error, with no coverage or k")
    assert not out.exists()


def test_the_python_api_refuses_coverage_or_k_beside_a_chip_and_takes_the_rest():
    member = SimpleNamespace(model=small_model())
    x = torch.rand(4, 16, dtype=torch.float64)
    from noisydeq.analysis.certified import plan

    for spec, named in ((CertifySpec(device="rram", chip=0, coverage=0.9), "^coverage with chip"),
                        (CertifySpec(device="rram", chip=3, k=1.0), "^k with chip"),
                        (CertifySpec(device="rram", chip=0, coverage=0.5, k=1.0),
                         "^coverage, k with chip: they shape the model envelope")):
        with pytest.raises(NoisyDEQError, match=named):
            plan(member, spec, x)
    for spec in (CertifySpec(device="rram", chip=0, dynamic=True, read_k=3.0),
                 CertifySpec(device="rram", coverage=0.9), CertifySpec(device="rram", k=1.0),
                 CertifySpec(device="rram", k=1.0, coverage=0.9)):  # k wins: the file's case
        check_device_options(spec)


@pytest.mark.parametrize("extra, argv, named", [
    ('device = "rram"\nchip = 2\nk = 1.0\n', [], "[certify] k with [certify] chip: "),
    ('device = "rram"\nchip = 2\n[quick.certify]\ncoverage = 0.9\n', [],
     "[quick.certify] coverage with [certify] chip: "),
    ('device = "rram"\nchip = 2\n', ["--coverage", "0.9"], "--coverage with [certify] chip: "),
    ('device = "rram"\ncoverage = 0.9\n', ["--chip", "1"], "[certify] coverage with --chip: "),
])
def test_an_experiment_s_coverage_or_k_beside_a_chip_is_one_line_naming_where(
        capsys, tmp_path, monkeypatch, extra, argv, named):
    from noisydeq import families

    monkeypatch.setattr(families, "train_family", lambda *a, **k: pytest.fail("trained"))
    exp = tmp_path / "t2.toml"
    exp.write_text(TABLE + extra, encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"), "--quiet",
                               *argv)
    prefix = "" if argv else f"{exp}: "
    one_line_error(code, err, f"{prefix}{named}", "(it would change nothing)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.toml"]


@pytest.mark.parametrize("argv", [["--read-noise-k", "2"],
                                  ["--read-noise-k", "2", "--chip", "0"],
                                  ["--read-noise-k", "2", "--k", "0.5"]])
def test_read_noise_k_without_dynamic_is_one_line(capsys, tmp_path, argv):
    """``--read-noise-k`` bounds only the per-read noise of ``--dynamic``: with a device but
    a static envelope it was accepted, changing no row, only the cells' keys and --out."""
    out = tmp_path / "out"
    (tmp_path / "fam").mkdir()
    code, _, err = run_certify(capsys, str(tmp_path / "fam"), "--out", str(out),
                               "--device", "rram", *argv)
    one_line_error(code, err, "error: --read-noise-k needs --dynamic: it bounds each read's "
                   "noise", "(it would change nothing)")
    assert not out.exists()


def test_read_noise_k_without_dynamic_is_refused_by_the_api_and_the_file(
        capsys, tmp_path, monkeypatch):
    with pytest.raises(NoisyDEQError, match="^read_k needs dynamic: "):
        check_device_options(CertifySpec(device="rram", read_k=2.0))
    check_device_options(CertifySpec(device="rram", dynamic=True, read_k=2.0))
    from noisydeq import families

    monkeypatch.setattr(families, "train_family", lambda *a, **k: pytest.fail("trained"))
    exp = tmp_path / "t2.toml"
    exp.write_text(TABLE + 'device = "rram"\nread_k = 2.0\n', encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"), "--quiet")
    one_line_error(code, err, f"{exp}: [certify] read_k needs [certify] dynamic: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.toml"]
