"""Generated malformed inputs for every command and file type the command line reads.

Each :class:`Case` is one distinct bad input: the command line, the files it names (made in
a fresh directory before the command runs) and a fragment the one-line error must contain.
``{d}`` in an argument is that directory. Cases are generated from small grammars (SNR
grids, integers, floats, TOML documents, JSON/safetensors artefacts) crossed with the
options and files that take them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: a file's content: bytes, text, or a function that writes it into the case directory
Content = bytes | str | Callable[[Path], None]


@dataclass
class Case:
    id: str
    argv: list[str]
    needle: str = ""
    files: dict[str, Content] = field(default_factory=dict)


# A small, fast sweep the bad option is added to (ideal device, model noise, 0 epochs).
SWEEP = ["sweep", "--device", "ideal", "--noise-site", "signal", "--snr", "0,inf",
         "--depths", "1", "--chips", "1", "--epochs", "0", "--set", "hidden=4", "--quiet",
         "--jobs", "1", "--threads", "1", "--out", "{d}/out"]


def _with(base: list[str], flag: str, value: str) -> list[str]:
    """``base`` with ``flag`` set to ``value`` (replacing the flag's default there)."""
    argv = list(base)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv[1:1] = [flag, value]
    return argv


BAD_GRIDS = [
    "", " ", ",", "0,,10", "0:", ":10", "0:10:", "0:10:2:3", "a:b", "0:10:0", "0:10:-1",
    "10:0", "nan", "-inf", "0:inf", "inf:10", "1e309", "-1e308:1e308", "0:1e9", "0:1:1e-9",
    "-400", "300", "0x10", "∞∞", "0:1:0.0001", "0,10,abc", "--", "0..10",
]
BAD_INTS = {
    "--depths": ["0", "-1", "x", "1.5", "", "1,,3", "1000000", "true", "1,0"],
    "--chips": ["0", "-1", "x", "99999999999999999999", "1.5"],
    "--seed": ["a", "-1", "", "99999999999999999999999", "0,x"],
    "--epochs": ["-1", "x", "1e9"],
    "--jobs": ["0", "-2", "x", "1.5"],
    "--threads": ["0", "a", "1,2,3", "-1"],
}
BAD_NAMES = {
    "--task": ["digitz", "", "../digits", "mnist10"],
    "--device": ["rrm", "", "no/such.toml", "../../etc/passwd"],
    "--torch-device": ["tpu9", "", "cuda:99"],
    "--noise-site": ["everywhere"],
    "--train-preset": ["papr"],
    "--data-dir": ["/nonexistent/mnist"],
}
BAD_SETS = [
    "x", "chipz=2", "chips=true", "chips=1e30", "max_rows=0", "hidden=-1", "hidden=10000000",
    "epochs=1e9", "input_act=tanh", "train_preset=quik", "snr_db=[]", "snr_db=[nan]",
    "seeds=[]", "kinds=['cnn']", "batched=2", "max_test_samples=0", "depths=[[1]]",
    "noise_site='foo'", "torch_device='tpu'", "fixed_snr_db=[-500]", "train_snr_db=[]",
    "max_train_samples=-5", "seeds=[-3]", "snr_db=" + "[" * 2000,
]


def sweep_cases() -> list[Case]:
    out = [Case(f"sweep --snr {g!r}", _with(SWEEP, "--snr", g), "--snr") for g in BAD_GRIDS]
    out += [Case(f"sweep --train-snr {g!r}", _with(SWEEP, "--train-snr", g), "--train-snr")
            for g in BAD_GRIDS[::3]]
    for flag, values in {**BAD_INTS, **BAD_NAMES}.items():
        out += [Case(f"sweep {flag} {v!r}", _with(SWEEP, flag, v)) for v in values]
    out += [Case(f"sweep --set {s[:30]!r}", [*SWEEP, "--set", s]) for s in BAD_SETS]
    out += [
        Case("sweep memory: 999 layers of 65536", [*SWEEP, "--depths", "999",
                                                    "--set", "hidden=65536"], "memory"),
        Case("sweep unknown option", [*SWEEP, "--snrr", "0"], "--snrr"),
        Case("sweep --out is a file", _with(SWEEP, "--out", "{d}/file"), "is a file",
             {"file": "x"}),
        Case("sweep --out below a file", _with(SWEEP, "--out", "{d}/file/sub"), "below the file",
             {"file": "x"}),
        Case("sweep --out in /proc", _with(SWEEP, "--out", "/proc/noisydeq-x"), "--out"),
        Case("sweep --device preset is binary", _with(SWEEP, "--device", "{d}/dev.toml"),
             "not UTF-8", {"dev.toml": b"\xff\xfe\x00kind"}),
        Case("sweep unreachable device SNR", [*_with(SWEEP, "--device", "rram"),
                                              "--noise-site", "device", "--snr", "150"],
             "SNR"),
        Case("sweep --kinds typo", _with(SWEEP, "--kinds", "deq,ffww"),
             "unknown model kind 'ffww'; did you mean 'ffw'?"),
        Case("sweep --set cell typo", [*SWEEP, "--set", "cell=con"], "did you mean 'conv'"),
        Case("sweep --set cell option it does not read",
             [*SWEEP, "--set", 'cell={name="conv1d", scales=2}'], "takes no 'scales'"),
        Case("sweep --set per-position cell on digits", [*SWEEP, "--set", "cell=conv1d"],
             "class per position"),
    ]
    return out


TRAIN = ["train", "--epochs", "1", "--width", "4", "--quiet", "--out", "{d}/out"]


def train_cases() -> list[Case]:
    bad = {
        "--width": ["0", "-1", "10000000", "x"], "--depth": ["0", "2000"],
        "--epochs": ["-1", "1000000000"], "--batch-size": ["0", "1073741824"],
        "--lr": ["nan", "inf", "-1", "0", "1e9"], "--train-snr": ["x", "-400", "nan"],
        "--device": ["nosuch"], "--device-snr": ["300", "abc"], "--seed": ["-1", "9" * 25],
        "--task": ["digit"], "--kind": ["cnn"], "--depths": ["1,x", "0", "5000"],
        "--preset": ["papr"], "--torch-device": ["tpu"], "--train-site": ["nowhere"],
        "--input-act": ["tanh"], "--ibp-eps": ["1.5", "1e300"],
    }
    field = {"--device-snr": "SNR", "--device": "device", "--task": "task", "--preset": "preset",
             "--depths": "depths", "--batch-size": "batch"}  # else the flag or the field
    out = [Case(f"train {k} {v!r}", _with(TRAIN, k, v), field.get(k, k.lstrip("-")))
           for k, vs in bad.items() for v in vs]
    out += [
        Case("train --out is a file", _with(TRAIN, "--out", "{d}/file"), "is a file",
             {"file": "x"}),
        Case("train mnist without data", [*TRAIN, "--task", "mnist", "--data-dir", "{d}/none"],
             "no such directory"),
        Case("train device SNR out of reach", [*TRAIN, "--device", "rram", "--device-snr",
                                               "150"], "SNR"),
        Case("train family of huge models", [*TRAIN, "--depths", "999", "--width", "65536"],
             "memory"),
    ]
    return out


EXPERIMENT = ('name = "x"\ntitle = "t"\n[sweep]\ntask = "digits"\ndevice = "ideal"\n'
              'noise_site = "signal"\ndepths = [1]\nhidden = 4\nepochs = 0\nchips = 1\n'
              'snr_db = "0,inf"\n[quick]\n[full]\n')


def _edited(text: str, before: str, **changes: str) -> str:
    """``text`` with each key's ``key = ...`` line set to ``key = value``, or that line added
    before the first ``before`` when the key has none."""
    for key, value in changes.items():
        line = next((ln for ln in text.splitlines() if ln.startswith(f"{key} =")), None)
        text = text.replace(line, f"{key} = {value}") if line else text.replace(
            before, f"{key} = {value}\n{before}", 1)
    return text


def _exp(**changes: str) -> str:
    return _edited(EXPERIMENT, "[quick]", **changes)


def run_cases() -> list[Case]:
    files = {
        "binary": b"\x00\x01\x02\x03name",
        "not UTF-8": 'name = "caf\xe9"\n'.encode("latin-1"),
        "empty": "",
        "invalid TOML": "name = \n[sweep\n",
        "deeply nested": "name = " + "[" * 5000,
        "name with ../": _exp(name='"../../escape"'),
        "name with /": _exp(name='"a/b"'),
        "absolute name": _exp(name='"/tmp/x"'),
        "no name": EXPERIMENT.replace('name = "x"\n', ""),
        "unknown key": _exp(nam='"x"'),
        "typo in quick": EXPERIMENT.replace("[quick]\n", "[quick]\nchipz = 2\n"),
        "chips = true": _exp(chips="true"),
        "snr_db 0:1e9": _exp(snr_db='"0:1e9"'),
        "snr_db nan": _exp(snr_db="nan"),
        "depths [0]": _exp(depths="[0]"),
        "hidden inf": _exp(hidden="inf"),
        "hidden = 1e12": _exp(hidden="1000000000000"),
        "device unknown": _exp(device='"quantum"'),
        "task unknown": _exp(task='"imagenet"'),
        "sweep is a string": EXPERIMENT.replace("[sweep]\n", "sweep = 3\n[sweepx]\n"),
        "figures not a list": _exp(figures="3"),
        "huge file": "# " + "x" * (17 * 2**20),
    }
    out = [Case(f"run experiment file: {name}", ["run", "{d}/exp.toml", "--quiet",
                                                 "--out", "{d}/out"], "", {"exp.toml": c})
           for name, c in files.items()]
    out += [
        Case("run missing file", ["run", "{d}/nope.toml"], "not found"),
        Case("run a directory", ["run", "{d}"], "not a file"),
        Case("run bad --set", ["run", "{d}/exp.toml", "--set", "chips=0", "--out", "{d}/out"],
             "[quick] --set: chips", {"exp.toml": EXPERIMENT}),
        # the error names the user's --set and the bundled experiment by name, not the
        # package's own file as if it were broken
        Case("run bundled --set typo", ["run", "regression-identity", "--set", "hiddn=3",
                                        "--out", "{d}/out"],
             "regression-identity [quick] --set: unknown key 'hiddn'; did you mean 'hidden'"),
        Case("run --jobs bad", ["run", "{d}/exp.toml", "--jobs", "none"], "jobs",
             {"exp.toml": EXPERIMENT}),
    ]
    return out


PRESET = {
    "rram": 'kind = "rram"\n', "photonic": 'kind = "photonic"\n', "snr": 'kind = "snr"\n',
}
BAD_PRESETS = {
    "g_max_us = inf": ("rram", "g_max_us = inf"), "g_max_us = nan": ("rram", "g_max_us = nan"),
    "g_max_us = -1": ("rram", "g_max_us = -1.0"), "dac_bits = true": ("rram", "dac_bits = true"),
    "adc_bits = 99": ("rram", "adc_bits = 99"), "g_min >= g_max": ("rram", "g_min_us = 50.0"),
    "t_inference_s = 2": ("rram", "t_inference_s = 2.0"),
    "t_inference_s = inf": ("rram", "t_inference_s = inf"),
    "out_noise = -inf": ("rram", "out_noise = -inf"),
    "drift_compensation = 3": ("rram", "drift_compensation = 3"),
    "prog_noise_scale text": ("rram", 'prog_noise_scale = "high"'),
    "wavelength_nm = inf": ("photonic", "wavelength_nm = inf"),
    "temperature_k = 0": ("photonic", "temperature_k = 0.0"),
    "power and energy": ("photonic", "power_per_mac_w = 1e-5\nenergy_per_mac_j = 1e-15"),
    "rin_db_per_hz = 10": ("photonic", "rin_db_per_hz = 10.0"),
    "bandwidth_hz = nan": ("photonic", "bandwidth_hz = nan"),
    "adc_full_scale = inf": ("photonic", "adc_full_scale = inf"),
    "photonic dac_bits = false": ("photonic", "dac_bits = false"),
    "snr_db = -400": ("snr", "snr_db = -400.0"), "snr_db = nan": ("snr", "snr_db = nan"),
    "snr mode unknown": ("snr", 'mode = "both"'),
    "unknown key": ("rram", "g_maxx = 1.0"),
}


def device_cases() -> list[Case]:
    out = [Case(f"devices preset: {name}", ["devices", "{d}/dev.toml"], "",
                {"dev.toml": PRESET[kind] + line + "\n"})
           for name, (kind, line) in BAD_PRESETS.items()]
    out += [
        Case("devices preset: binary", ["devices", "{d}/dev.toml"], "not UTF-8",
             {"dev.toml": bytes(range(256))}),
        Case("devices preset: NUL bytes", ["devices", "{d}/dev.toml"], "binary",
             {"dev.toml": 'kind = "snr"\n\x00\x00'}),
        Case("devices preset: invalid TOML", ["devices", "{d}/dev.toml"], "not valid TOML",
             {"dev.toml": 'kind = "snr\n'}),
        Case("devices preset: no kind", ["devices", "{d}/dev.toml"], "kind",
             {"dev.toml": "snr_db = 10.0\n"}),
        Case("devices preset: kind unknown", ["devices", "{d}/dev.toml"], "kind",
             {"dev.toml": 'kind = "memristor"\n'}),
        Case("devices preset: missing file", ["devices", "{d}/none.toml"], "not found"),
        Case("devices unknown name", ["devices", "rram-wan2020"], "did you mean"),
        Case("sweep with a bad preset file", _with(SWEEP, "--device", "{d}/dev.toml"),
             "g_max_us", {"dev.toml": 'kind = "rram"\ng_max_us = inf\n'}),
    ]
    return out


def _checkpoint(meta_change: Callable[[dict], None], *, numel: int = 64) -> Callable[[Path], None]:
    """Writer of a crafted checkpoint (valid digest, bad metadata) at ``<d>/m.safetensors``."""

    def write(d: Path) -> None:
        import torch

        from noisydeq import store

        config = {"model": {"spec": {"kind": "deq", "in_features": 64, "out_features": 10,
                                      "width": 8, "depth": 1}},
                  "train": {"epochs": 1, "seed": 0}, "task": {"name": "digits", "seed": 0}}
        meta = {"config": config, "config_hash": store.config_hash(config),
                "extra": {"test_metric": 0.5}}
        meta_change(meta)
        store.save_tensors(d / "m.safetensors", {"w": torch.zeros(numel)}, meta)

    return write


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        target = meta
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return change


CRAFTED = {
    "config is a list": _set("config", [1, 2]),
    "train.epochs = 'abc'": _set("config.train.epochs", "abc"),
    "train.epochs = true": _set("config.train.epochs", True),
    "train.epochs = 0": _set("config.train.epochs", 0),
    "model spec missing": _set("config.model", {}),
    "model spec a string": _set("config.model.spec", "deq"),
    "width 65536, tiny weights": _set("config.model.spec.width", 65536),
    "width 10^12": _set("config.model.spec.width", 10**12),
    "kind unknown": _set("config.model.spec.kind", "rnn"),
    "extra is a list": _set("extra", [0.5]),
    "test_metric text": _set("extra.test_metric", "good"),
    "task is a number": _set("config.task", 7),
    "train.noise a list": _set("config.train.noise", [1]),
    "train.seed text": _set("config.train.seed", "zero"),
    "weights do not fit": lambda meta: None,
}


def _raw(data: bytes) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        (d / "m.safetensors").write_bytes(data)

    return write


def analysis_cases() -> list[Case]:
    out = []
    for name, change in CRAFTED.items():
        for cmd in ("spectrum", "sensitivity"):
            out.append(Case(f"{cmd} crafted checkpoint: {name}",
                            [cmd, "--family", "{d}/m.safetensors", "--out", "{d}/out"],
                            "m.safetensors", {"setup": _checkpoint(change)}))
    raw = {
        "empty file": b"",
        "8 bytes": b"\x08\x00\x00\x00\x00\x00\x00\x00",
        "header length too big": (10**12).to_bytes(8, "little") + b"{}",
        "header not JSON": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
        "plain safetensors": b"\x0e\x00\x00\x00\x00\x00\x00\x00{}            ",
        "pickle": b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.",
    }
    out += [Case(f"spectrum raw checkpoint: {name}", ["spectrum", "--family",
                                                      "{d}/m.safetensors", "--out", "{d}/o"],
                 "m.safetensors", {"setup": _raw(data)}) for name, data in raw.items()]
    bad_opts = [
        ("sensitivity", "--samples", "1"), ("sensitivity", "--samples", "9999999"),
        ("sensitivity", "--eta", "-1"), ("sensitivity", "--eta", "nan"),
        ("sensitivity", "--snr", "x"), ("sensitivity", "--snr", "-400"),
        ("sensitivity", "--precision", "-1"), ("sensitivity", "--precision", "nan"),
        ("sensitivity", "--precision", "1e300"), ("sensitivity", "--precision", "1.5"),
        ("sensitivity", "--inputs", "0"), ("sensitivity", "--seed", "-1"),
        ("spectrum", "--inputs", "-1"), ("spectrum", "--inputs", "99999999"),
        ("solvers", "--width", "0"), ("solvers", "--width", "70000"),
        ("solvers", "--eps", "0"), ("solvers", "--eps", "nan"), ("solvers", "--eps", "inf"),
        ("solvers", "--window", "0"), ("solvers", "--window", "x"),
        ("solvers", "--window", "500"), ("solvers", "--solvers", "newton"),
        ("solvers", "--snr", "0:1e9"), ("solvers", "--max-iter", "0"),
        ("solvers", "--max-iter", "10000000"), ("solvers", "--batch", "0"),
        ("solvers", "--count-snr", "abc"), ("solvers", "--accuracy-snr", "-1e308"),
    ]
    for cmd, flag, value in bad_opts:
        argv = [cmd, flag, value, "--out", "{d}/out"]
        if cmd != "solvers":
            argv += ["--family", "{d}/nofamily"]
        out.append(Case(f"{cmd} {flag} {value!r}", argv, flag))
    out += [
        Case("spectrum --family missing", ["spectrum", "--family", "{d}/none"], "--family"),
        Case("spectrum --family without models", ["spectrum", "--family", "{d}/empty"],
             "no trained model", {"empty/readme.txt": "x"}),
        Case("solvers --family missing", ["solvers", "--family", "{d}/none", "--out",
                                          "{d}/out"], "--family"),
    ]
    return out


def run_dir_cases() -> list[Case]:
    """``sweep`` into an --out whose config.toml / meta.json is damaged or foreign."""

    def run_dir(damage: Callable[[Path], None]) -> Callable[[Path], None]:
        def write(d: Path) -> None:
            from noisydeq.config import SweepSpec, build
            from noisydeq.results import RunDir

            spec = build(SweepSpec, {"device": "ideal", "noise_site": "signal",
                                     "snr_db": [0.0, math.inf], "depths": [1], "chips": 1,
                                     "epochs": 0, "hidden": 4})
            with RunDir(d / "out") as rd:
                rd.open(spec)
            damage(d / "out")

        return write

    def edit(name: str, fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
        def damage(out: Path) -> None:
            p = out / name
            p.write_bytes(fn(p.read_bytes()))

        return damage

    def flip(data: bytes, at: int = 40) -> bytes:
        b = bytearray(data)
        b[at] ^= 0x04
        return bytes(b)

    damages = {
        "config.toml truncated": edit("config.toml", lambda b: b[: len(b) // 2]),
        "config.toml bit flip": edit("config.toml", lambda b: flip(b, len(b) - 5)),
        "config.toml digest line removed": edit("config.toml",
                                                lambda b: b.split(b"\n", 1)[1]),
        "config.toml binary": edit("config.toml", lambda b: b"\x00\xff" + b),
        "config.toml other config, digest fixed": lambda out: (out / "config.toml").write_text(
            __import__("noisydeq.store", fromlist=["x"]).sign_text(
                (out / "config.toml").read_text().split("\n", 1)[1].replace(
                    "epochs = 0", "epochs = 1"))),
        "config.toml unknown key, digest fixed": lambda out: (out / "config.toml").write_text(
            __import__("noisydeq.store", fromlist=["x"]).sign_text(
                (out / "config.toml").read_text().split("\n", 1)[1] + "\nfoo = 1\n")),
        "meta.json not JSON": edit("meta.json", lambda b: b"{not json"),
        "meta.json truncated": edit("meta.json", lambda b: b[:20]),
        "meta.json value changed": edit("meta.json", lambda b: b.replace(b'"seeds"', b'"seedz"')),
        "meta.json a list": edit("meta.json", lambda b: b"[1, 2]"),
        "meta.json non-UTF-8": edit("meta.json", lambda b: b"\xff" + b),
        "cells without config": lambda out: (out / "config.toml").unlink(),
    }
    return [Case(f"sweep into run dir: {name}", list(SWEEP), "out",
                 {"setup": run_dir(damage)}) for name, damage in damages.items()]


def attack_cases() -> list[Case]:
    """``attack``: its grids, counts and names (checked before the family is read), and
    crafted checkpoints."""
    fam = ["attack", "--family", "{d}/nofamily", "--out", "{d}/out"]
    out = [Case(f"attack crafted checkpoint: {name}",
                ["attack", "--family", "{d}/m.safetensors", "--out", "{d}/out"],
                "m.safetensors", {"setup": _checkpoint(change)})
           for name, change in CRAFTED.items()]
    strengths = [g for g in BAD_GRIDS if g not in ("300", "--")]  # 300: a valid σ
    for flag, name in (("--eps", "eps"), ("--sigma", "sigma"), ("--fraction", "fraction")):
        out += [Case(f"attack {flag} {g!r}", _with(fam, flag, g), name) for g in strengths]
    out += [Case(f"attack --snr {g!r}", _with(fam, "--snr", g), "snr") for g in BAD_GRIDS
            if g != "--"]
    ints = {"--chips": ["0", "x", "99999999999999999999", "100000"],
            "--samples": ["0", "-1", "x"], "--val-samples": ["-1"], "--eot": ["0", "1.5"],
            "--steps": ["0", "1.5", "x", "10000000"], "--pgd-steps": ["0", "2.5"],
            "--seed": ["a", "-1"], "--steps-eps": ["nan", "-0.1", "2"]}
    for flag, values in ints.items():
        needle = "" if flag in ("--samples", "--val-samples", "--seed") else (
            flag.lstrip("-"))  # click's range message or the option the spec field names
        out += [Case(f"attack {flag} {v!r}", _with(fam, flag, v), needle) for v in values]
    names = {"--attacks": ("pgd-epz", "pgd-eps"), "--estimators": ("exactt", "exact"),
             "--defences": ("erly", "early"), "--norm": ("l3", "linf"),
             "--set": ("bogus=1", "bogus")}
    out += [Case(f"attack {flag} {v!r}", _with(fam, flag, v), needle)
            for flag, (v, needle) in names.items()]
    out += [Case("attack --family missing", ["attack", "--family", "{d}/none"], "none"),
            Case("attack --family without models", ["attack", "--family", "{d}/empty"],
                 "no trained model", {"empty/readme.txt": "x"})]
    return out


LYAPUNOV_OK = ('name = "x"\ntask = "digits"\n[attack]\nvariants = ["plain"]\n'
               'eps_255 = [2]\n')


def lyapunov_cases() -> list[Case]:
    """``lyapunov EXPERIMENT.toml``: malformed experiment files and options."""
    bad = {
        "no table": ('name = "x"\n', "[attack] or a [device] table"),
        "not TOML": ('name = "x\n', "not valid TOML"),
        "unknown key": (LYAPUNOV_OK + "colour = 1\n", "colour"),
        "variant typo": ('name = "x"\n[attack]\nvariants = ["bot"]\n', "did you mean 'both'"),
        "eps 0": ('name = "x"\n[attack]\neps_255 = [0]\n', "eps_255"),
        "eps 300": ('name = "x"\n[attack]\neps_255 = [300]\n', "eps_255"),
        "eps nan": ('name = "x"\n[attack]\neps_255 = [nan]\n', "eps_255"),
        "steps 0": ('name = "x"\n[attack]\nsteps = 0\n', "steps"),
        "alpha inf": ('name = "x"\n[attack]\nalpha_255 = inf\n', "alpha_255"),
        "device snr nan": ('name = "x"\n[device]\nsnr_db = [nan]\n', "snr_db"),
        "device snr 300": ('name = "x"\n[device]\nsnr_db = "0:300"\n', "snr_db"),
        "group typo": ('name = "x"\n[device]\ngroups = {rram = ["lyadeqq"]}\n',
                       "did you mean 'lyadeq'"),
        "chips 0": ('name = "x"\n[device]\nchips = 0\n', "chips"),
        "hidden 10^9": ('name = "x"\nhidden = 1000000000\n[attack]\n', "hidden"),
        "lyapunov c -1": ('name = "x"\n[lyapunov]\nc = -1.0\n[attack]\n', "c"),
        "lyapunov variant": ('name = "x"\n[lyapunov]\nvariant = "both"\n[attack]\n',
                             "variant"),
        "task typo": ('name = "x"\ntask = "digitz"\n[attack]\n', "digits"),
    }
    out = [Case(f"lyapunov file: {name}", ["lyapunov", "{d}/e.toml", "--out", "{d}/out"],
                needle, {"e.toml": text}) for name, (text, needle) in bad.items()]
    out += [
        Case("lyapunov file missing", ["lyapunov", "{d}/none.toml", "--out", "{d}/out"],
             "none.toml"),
        Case("lyapunov --seeds x", ["lyapunov", "{d}/e.toml", "--seeds", "x", "--out",
                                    "{d}/out"], "--seed", {"e.toml": LYAPUNOV_OK}),
        Case("lyapunov --only typo", ["lyapunov", "{d}/e.toml", "--only", "atack", "--out",
                                      "{d}/out"], "--only", {"e.toml": LYAPUNOV_OK}),
        Case("lyapunov --out is a file", ["lyapunov", "{d}/e.toml", "--out", "{d}/e.toml"],
             "not a directory", {"e.toml": LYAPUNOV_OK}),
    ]
    return out


STUDY = ('name = "x"\n[study]\ntask = "prefix_sums"\n'
         'task_options = { length = 8, n_train = 8, n_test = 4 }\nshifts = [8]\n'
         'train = { epochs = 0 }\n'
         '[study.models.deq]\nkind = "deq"\ncell = "conv1d"\nwidth = 2\n[quick]\n[full]\n')


def _study(**changes: str) -> str:
    return _edited(STUDY, "[study.models", **changes)


def _truncated_cifar(d: Path) -> None:
    (d / "cifar").mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (d / "cifar" / name).write_bytes(bytes(3073 * 3))  # 3 records, not 10,000


def study_cases() -> list[Case]:
    maze = 'task = "mazes"\ntask_options = { size = 9, n_train = 4, n_test = 2 }\n'
    files = {
        "length 0": (_study(task_options="{ length = 0, n_train = 8, n_test = 4 }"), "length"),
        "test length -8": (_study(shifts="[8, -8]"), "length"),
        "odd maze size 10": (STUDY.replace('task = "prefix_sums"\n', maze).replace(
            "task_options = { length = 8, n_train = 8, n_test = 4 }\n", "").replace(
            'cell = "conv1d"', 'cell = "residual"').replace("shifts = [8]", "shifts = [10]"),
            "odd"),
        "matrix scale 0": (STUDY.replace('task = "prefix_sums"', 'task = "matrix_add"').replace(
            "task_options = { length = 8, n_train = 8, n_test = 4 }",
            "task_options = { n_train = 8, n_test = 4 }").replace(
            'cell = "conv1d"', 'cell = "mlp_stack"').replace("shifts = [8]", "shifts = [0]"),
            "scale"),
        "channels 0": (STUDY.replace("width = 2", "width = 0"), "width"),
        "kernel even": (STUDY.replace("width = 2", "width = 2\nkernel_size = 4"), "odd"),
        "cell unknown": (STUDY.replace('cell = "conv1d"', 'cell = "conv3d"'), "cell"),
        "mlp on per-position task": (STUDY.replace('cell = "conv1d"', 'cell = "mlp"'),
                                     "per position"),
        "train snr nan": (_study(train_snr_db="[nan]"), "train_snr_db"),
        "no models": (STUDY.split("[study.models.deq]")[0] + "models = {}\n[quick]\n[full]\n",
                      "at least one model"),
        "eval_batch 0": (_study(eval_batch="0"), "eval_batch"),
        "cifar truncated": (STUDY.replace('task = "prefix_sums"', 'task = "cifar10"').replace(
            "task_options = { length = 8, n_train = 8, n_test = 4 }\n", "").replace(
            "shifts = [8]\n", 'data_dir = "cifar"\n').replace('cell = "conv1d"', 'cell = "mdeq"'
                                                               ).replace("width = 2", "width = 4"),
            "data_batch_1.bin"),
    }
    out = [Case(f"study file: {name}", ["study", "{d}/s.toml", "--quiet", "--out", "{d}/out"],
                needle, {"s.toml": text, **({"setup": _truncated_cifar} if "cifar" in name
                                             else {})})
           for name, (text, needle) in files.items()]
    out += [
        Case("study --set unknown", ["study", "{d}/s.toml", "--set", "seedz=[0]", "--out",
                                     "{d}/out"], "seeds", {"s.toml": STUDY}),
        Case("study --threads 0", ["study", "{d}/s.toml", "--threads", "0", "--out", "{d}/out"],
             "threads", {"s.toml": STUDY}),
        Case("study a sweep file", ["study", "{d}/exp.toml", "--out", "{d}/out"], "",
             {"exp.toml": EXPERIMENT}),
    ]
    return out


def all_cases() -> list[Case]:
    cases = (sweep_cases() + train_cases() + run_cases() + device_cases() + analysis_cases()
             + run_dir_cases() + attack_cases() + lyapunov_cases() + study_cases())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, dup
    return cases


def dumps(obj: object) -> str:  # pragma: no cover - debugging aid
    return json.dumps(obj, indent=1, default=str)
