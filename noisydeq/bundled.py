"""The experiment files shipped inside the package, found by name.

Every experiment file of the paper's figures and tables is package data in
``noisydeq/experiments/NAME.toml`` (it ships in the wheel). The commands that read an
experiment file (``run``, ``study``, ``adversarial``, ``lyapunov``, ``certify`` and
``python -m noisydeq.analysis.fig13``) take either the path of a TOML file (a user's own,
read first when it exists) or the name of a bundled one, with or without ``.toml``:
:func:`find_experiment`. :func:`bundled_experiments` lists them with the command that runs
each and a one-line description (the file's ``description``, else its ``title``, else its
leading comment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from noisydeq.errors import NoisyDEQError, did_you_mean

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["Bundled", "bundled_experiments", "command_for", "experiment_names",
           "experiments_dir", "find_experiment", "is_bundled", "refuse_other_command", "runner"]

FIG13 = "python -m noisydeq.analysis.fig13"


@dataclass(frozen=True)
class Bundled:
    """One shipped experiment file."""

    name: str          # the file's stem: what ``noisydeq run NAME`` takes
    path: Path
    command: str       # the command that runs it (``run``, ``study``, ... or FIG13)
    description: str   # one line


def experiments_dir() -> Path:
    """Folder of the shipped experiment files (package data)."""
    return Path(__file__).resolve().parent / "experiments"


def experiment_names() -> list[str]:
    """Names of the shipped experiment files, sorted."""
    return sorted(p.stem for p in experiments_dir().glob("*.toml"))


def command_for(data: dict) -> str | None:
    """The command that runs an experiment file with these top-level tables (None: none)."""
    if "sweep" in data:
        return "run"
    if "study" in data:
        return "study"
    if "lyapunov" in data:
        return "lyapunov"
    if "evaluations" in data:
        return "adversarial"
    if data.get("kind") in ("fig2", "table2"):
        return "certify"
    if "jac_weight" in data:
        return FIG13
    return None


def runner(command: str) -> str:
    """The command line that starts ``command`` (``run`` -> ``noisydeq run``)."""
    return command if command.startswith("python") else f"noisydeq {command}"


def _description(data: dict, text: str) -> str:
    for key in ("description", "title"):
        if isinstance(data.get(key), str) and data[key].strip():
            return " ".join(data[key].split())
    words: list[str] = []  # the leading comment, up to the line that ends its sentence
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
        if words[-1].endswith("."):
            break
    return " ".join(w for w in words if w)


def _read(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise NoisyDEQError(f"{path}: not valid TOML ({err})") from None


def bundled_experiments() -> list[Bundled]:
    """Every shipped experiment file with its command and one-line description."""
    out = []
    for name in experiment_names():
        path = experiments_dir() / f"{name}.toml"
        data, text = _read(path)
        out.append(Bundled(name, path, command_for(data) or "?", _description(data, text)))
    return out


def _bare(arg: str) -> str | None:
    """``arg`` as a bundled name (``fig1-mnist`` or ``fig1-mnist.toml``), None if it has a
    folder part."""
    p = Path(arg)
    if p.parent != Path(".") or not p.name:
        return None
    return p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name


def is_bundled(arg: str | Path) -> bool:
    """True when ``arg`` is not an existing path but names a shipped experiment file."""
    name = _bare(str(arg))
    return (not Path(arg).exists() and name is not None
            and (experiments_dir() / f"{name}.toml").is_file())


#: what each command's experiment file is, for the line refusing a file of another command
_WHAT = {
    "run": "a sweep experiment (no [sweep] table)",
    "study": "a study (no [study] table)",
    "lyapunov": "a LyaDEQ experiment (no [lyapunov] table)",
    "adversarial": "an adversarial experiment (no [evaluations] table)",
    "certify": "a certification experiment (kind 'fig2' or 'table2')",
    FIG13: "a Fig. 13 experiment (no jac_weight)",
}


def refuse_other_command(path: Path, given: str | Path, command: str) -> None:
    """An experiment file that another command runs (``noisydeq study fig1-mnist``): one line
    saying which command runs it. A file that does not parse, or whose command is unknown, is
    left to the command's own loader, which reports it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return
    other = command_for(data)
    if other is not None and other != command:
        what = _WHAT.get(command, f"an experiment of {runner(command)}")
        raise NoisyDEQError(f"{given}: not {what}; run it with '{runner(other)} {given}'")


def find_experiment(arg: str | Path, command: str = "run") -> Path:
    """The experiment file ``arg`` means: an existing path as given, else the shipped file of
    that name. Anything else is one line naming the bundled experiments (did-you-mean), and
    so is a file that another command runs (:func:`refuse_other_command`)."""
    p = Path(arg)
    if p.is_file():
        refuse_other_command(p, arg, command)
        return p
    if p.is_dir():
        raise NoisyDEQError(f"{arg}: a directory, not a file (an experiment file or a name)")
    if is_bundled(arg):
        path = experiments_dir() / f"{_bare(str(arg))}.toml"
        refuse_other_command(path, arg, command)
        return path
    names = experiment_names()
    stem = p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name
    if stem in names:  # a path whose file is gone, e.g. the old experiments/NAME.toml
        raise NoisyDEQError(f"{arg}: no such file; '{stem}' is a bundled experiment: "
                            f"{runner(command)} {stem}")
    hint = did_you_mean(stem, names)
    what = f"unknown experiment '{arg}'" if _bare(str(arg)) == str(arg) and not str(
        arg).endswith(".toml") else f"file not found: {arg}"
    raise NoisyDEQError(f"{what}{hint} (bundled: {', '.join(names)}; or the path of a .toml "
                        "file; 'noisydeq run --list' describes them)")
