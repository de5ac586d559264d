"""Running the CLI in-process in tests, and the one-line error check every bad input shares."""

from noisydeq.cli import main


def run_cli(argv, capsys):
    """Run ``noisydeq ARGV`` in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *needles):
    """Exit code 2 and exactly one ``noisydeq: error:`` line holding every needle."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("noisydeq: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]


def refused_writing_nothing(argv, tmp_path, monkeypatch, capsys, *needles):
    """``noisydeq ARGV --out TMP/out`` with a fresh ``$NOISYDEQ_CACHE`` (TMP/cache) is one
    line holding every needle (:func:`one_line_error`) and makes neither directory."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    one_line_error(code, err, *needles)
    assert not out.exists() and not (tmp_path / "cache").exists()
