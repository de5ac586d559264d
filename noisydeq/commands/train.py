"""``noisydeq train``: train one DEQ/FFW, or a depth-matched family (``--depths``).

One model goes to ``--out`` (default ``runs/train/<kind>-d<depth>-w<width>-s<seed>``):
``model.safetensors`` + ``model.json`` (full resolved config and its hash), with a
per-epoch ``resume.safetensors`` that ``--resume`` continues from. A family goes into the
model cache (``--out`` overrides it; default ``$NOISYDEQ_CACHE`` or the user cache dir), the
same cache ``noisydeq sweep`` reuses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from noisydeq import limits
from noisydeq.config import FamilySpec, ModelSpec, NoiseSpec, TrainSpec, build, parse_snr_value
from noisydeq.errors import NoisyDEQError
from noisydeq.runtime import resolve_torch_device
from noisydeq.store import check_out_dir, make_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _snr(text: str, option: str) -> float:
    try:
        return parse_snr_value(text)
    except NoisyDEQError as err:
        raise NoisyDEQError(f"{option}: {err}") from None


def _noise(train_snr: str, site: str, scale: str) -> NoiseSpec:
    snr = _snr(train_snr, "--train-snr")
    if math.isinf(snr):
        build(NoiseSpec, {"snr_scale": scale}, where="--snr-scale")  # validate it anyway
        return NoiseSpec()
    return build(NoiseSpec, {"site": site, "kind": "multiplicative", "snr_db": snr,
                             "snr_scale": scale}, where="--train-snr")


def _fmt(metric: float, name: str) -> str:
    return f"{metric:.4f}" if name == "accuracy" else f"{metric:.3e}"


@click.command("train")
@click.option("--task", default="digits", show_default=True,
              help="digits, regression1d, mnist or mnist10k.")
@click.option("--data-dir", default=None, help="MNIST directory (else $NOISYDEQ_MNIST_DIR).")
@click.option("--kind", type=click.Choice(["deq", "ffw"]), default="deq", show_default=True,
              help="Model kind (single-model mode).")
@click.option("--width", type=int, default=128, show_default=True,
              help="FFW layer width; DEQ width (or the FFW width it is matched to).")
@click.option("--depth", type=int, default=1, show_default=True,
              help="FFW layers; for a DEQ the FFW depth whose parameter count it matches.")
@click.option("--depths", default=None,
              help="Train a matched DEQ/FFW family at these FFW depths, e.g. 1,3,5,7.")
@click.option("--preset", default="quick", show_default=True, help="quick or paper (Tables 1-2).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Mini-batch size (default: the preset's).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 1e-3).")
@click.option("--train-snr", default="inf", show_default=True,
              help="Training noise SNR in dB (paper: 0, 10 or inf = none).")
@click.option("--train-site", type=click.Choice(["signal", "state", "input"]), default="signal",
              show_default=True, help="Where training noise is injected (Eq. 3-4).")
@click.option("--input-act", type=click.Choice(["relu", "silu", "identity"]), default="relu",
              show_default=True, help="Input projection nonlinearity.")
@click.option("--ffw-form", default=None,
              help="FFW layer form: eq57x (default; z0 = x~, every hidden matrix acts), eq57 "
                   "(z0 = 0) or eq32 (z0 = x~, no injection).")
@click.option("--snr-scale", default="realised", show_default=True,
              help="Training-noise SNR scale: realised or paper (Eq. 4 literally).")
@click.option("--device", default=None,
              help="Hardware model in the loop (preset name or .toml), e.g. rram, photonic.")
@click.option("--device-snr", default=None, help="Calibrate the training device to this SNR.")
@click.option("--seed", type=click.IntRange(0, limits.MAX_SEED), default=0, show_default=True)
@click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", default=None, help="Output directory (family: the model cache).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run / reuse a finished one in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(**opts: Any) -> None:
    """Train one model or a depth-matched DEQ/FFW family on a task.

    Everything is validated (including whether the models fit into memory) before
    anything is written.
    """
    for name, top in (("width", limits.MAX_WIDTH), ("depth", limits.MAX_DEPTH)):
        if not 1 <= opts[name] <= top:  # before torch is imported: one line, at once
            raise NoisyDEQError(f"--{name}: must be an integer in 1..{top}, got {opts[name]}")
    from noisydeq.tasks import check_task_name

    check_task_name(opts["task"])
    from noisydeq.families import member_size
    from noisydeq.models.extra import fit_to_task
    from noisydeq.tasks import load_task

    dev = resolve_torch_device(opts["torch_device"])
    noise = _noise(opts["train_snr"], opts["train_site"], opts["snr_scale"])
    overrides: dict[str, Any] = {"seed": opts["seed"]}
    for key in ("epochs", "batch_size", "lr"):
        if opts[key] is not None:
            overrides[key] = opts[key]
    if opts["device"] is not None:
        from noisydeq.hardware import load_spec

        load_spec(opts["device"])  # unknown device: one line, before any work
        overrides["device"] = opts["device"]
    if opts["device_snr"] is not None:
        overrides["device_snr_db"] = _snr(opts["device_snr"], "--device-snr")
        if opts["device"] is not None:  # an SNR the device cannot reach: one line, now
            from noisydeq.hardware import get_device

            get_device(opts["device"], snr_db=overrides["device_snr_db"])
    out = Path(opts["out"]).expanduser() if opts["out"] else None
    if out is not None:
        check_out_dir(out)

    if opts["depths"] is not None:
        fspec = build(FamilySpec, {
            "task": opts["task"], "data_dir": opts["data_dir"], "depths": opts["depths"],
            "hidden": opts["width"], "input_act": opts["input_act"], "seed": opts["seed"],
            "train_preset": opts["preset"], "train_snr_db": noise.snr_db,
            "train_site": opts["train_site"], "ffw_form": opts["ffw_form"],
            "snr_scale": opts["snr_scale"],
            "train": {k: v for k, v in overrides.items() if k != "seed"},
        }, where="train")
        batch = max(fspec.train_spec(k).batch_size for k in fspec.kinds)  # validate first
        task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["seed"])
        fit_to_task({}, task)  # a per-position task (prefix_sums, mazes) needs another cell
        sizes = [member_size(k, d, fspec.hidden, task.in_features, task.out_features)
                 for d in fspec.depths for k in fspec.kinds]
        _check_memory(sizes, batch, dev)
        if out is not None:
            make_dir(out)
        _notice(task)
        _family(fspec, task, out, dev, opts)
        return

    if opts["ffw_form"] is not None:
        if opts["kind"] != "ffw":
            raise NoisyDEQError(
                f"--ffw-form: given for a {opts['kind']} model (only an FFW has a layer form)"
            )
        build(ModelSpec, {"kind": "ffw", "in_features": 1, "out_features": 1,
                          "ffw_form": opts["ffw_form"]}, where="model")
    tspec = TrainSpec.preset(opts["preset"], opts["kind"], noise, **overrides)
    task = load_task(opts["task"], data_dir=opts["data_dir"], seed=opts["seed"])
    fit_to_task({}, task)  # a per-position task (prefix_sums, mazes) needs another cell
    data = {
        "kind": opts["kind"], "in_features": task.in_features,
        "out_features": task.out_features, "width": opts["width"], "depth": opts["depth"],
        "input_act": opts["input_act"],
    }
    if opts["ffw_form"] is not None:
        data["ffw_form"] = opts["ffw_form"]
    mspec = build(ModelSpec, data, where="model")
    _check_memory([member_size(mspec.kind, mspec.depth, mspec.width, task.in_features,
                               task.out_features)], tspec.batch_size, dev)
    _notice(task)
    _single(tspec, task, mspec, out, dev, opts)


def _check_memory(sizes: list[tuple[int, int]], batch: int, dev: torch.device) -> None:
    """Refuse models that cannot be trained in this machine's memory (one line)."""
    width, params = max(sizes, key=lambda s: s[1])
    need = limits.FLOAT * sum(p for _, p in sizes) + limits.model_bytes(params, batch, width)
    limits.check_memory(need, f"train: the largest model (width {width}, {params:,} "
                        "parameters)", str(dev), "lower --width / --depth(s)")


def _notice(task: Any) -> None:
    if task.notice:
        click.echo(f"noisydeq: note: {task.notice}", err=True)


def _single(tspec: TrainSpec, task: Any, mspec: ModelSpec, out: Path | None,
            dev: torch.device, opts: dict) -> None:
    from noisydeq.families import build_member
    from noisydeq.train import train_model

    model = build_member(mspec, opts["seed"])
    if out is None:
        out = Path("runs") / "train" / f"{mspec.kind}-d{mspec.depth}-w{model.width}-s{opts['seed']}"
        check_out_dir(out)
    make_dir(out)
    res = train_model(model, task, tspec, out_dir=out, resume=opts["resume"],
                      torch_device=dev, quiet=opts["quiet"], desc=f"{mspec.kind}")
    row = {"kind": mspec.kind, "depth": mspec.depth, "width": int(model.width),
           "params": sum(p.numel() for p in model.parameters()), "task": task.name,
           "metric": task.metric_name, "value": res.test_metric, "seconds": res.seconds,
           "loaded": res.loaded, "config_hash": res.config_hash, "path": str(res.path)}
    _report([row], opts["as_json"])


def _family(fspec: FamilySpec, task: Any, out: Path | None, dev: torch.device, opts: dict) -> None:
    from noisydeq.families import cache_root, train_family

    fam = train_family(fspec, task, cache_dir=out, torch_device=dev, quiet=opts["quiet"])
    root = cache_root(out) / "models"
    rows = [
        {"kind": m.kind, "depth": m.depth, "width": m.width, "params": m.params,
         "task": task.name, "metric": task.metric_name, "value": m.result.test_metric,
         "seconds": m.result.seconds, "loaded": m.cached, "config_hash": m.key,
         "path": str(root / m.key / "model.safetensors")}
        for m in fam.members
    ]
    _report(rows, opts["as_json"])
    if not opts["as_json"]:
        click.echo(f"family: {len(rows)} models in {fam.seconds:.1f} s "
                   f"({fam.trained_seconds:.1f} s training); cache {root}")


def _report(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=True))
        return
    click.echo(f"{'kind':<4} {'depth':>5} {'width':>5} {'params':>8}  {'metric':<8} "
               f"{'value':>9} {'time':>7}  path")
    for r in rows:
        how = "cached" if r["loaded"] else f"{r['seconds']:.1f}s"
        click.echo(f"{r['kind']:<4} {r['depth']:>5} {r['width']:>5} {r['params']:>8}  "
                   f"{r['metric']:<8} {_fmt(r['value'], r['metric']):>9} {how:>7}  {r['path']}")
