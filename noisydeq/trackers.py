"""Optional logging to the experiment trackers researchers use: TensorBoard, Weights &
Biases, MLflow (``noisydeq --tracker NAME [--tracker-dir DIR] COMMAND ...``).

Off by default. Each tracker is driven through its own library, imported only when asked
for: ``tensorboard`` (the TensorBoard event-file writer, ``torch.utils.tensorboard``; needs
the ``tensorboard`` package), ``wandb`` (``wandb.init``; ``WANDB_MODE=offline`` keeps it
local) or ``mlflow`` (``mlflow.start_run``). A missing library is one error line naming the
install command, before the command does any work.

A tracker is a sink of the command's events (:mod:`noisydeq.events`, the same stream
``--log-json`` writes), in the process that runs the command:

* ``start`` — the command, its arguments and the package version as run parameters
  (TensorBoard: a text summary);
* ``epoch`` — every numeric field of a training epoch's record as a scalar
  ``train/<model>/<field>`` at step = epoch (1-based);
* ``cell`` — a finished sweep cell (one model on one chip): its metric at each SNR level
  as a scalar ``<metric>/<model>/chip<k>`` at step = the SNR in dB (integer SNR grids; a grid
  with fractional levels is logged at step = round(10 · SNR) under ``... (x0.1 dB)``), and at
  no noise as ``<metric>_no_noise/<model>/chip<k>``;
* ``end`` / ``error`` — the wall time (``seconds``) and exit status; the run is closed.

Events of evaluation worker processes (``--jobs`` > 1) reach the JSON log, not the tracker;
the cells they compute are recorded by the parent (``cell``) and so are logged. Tags are
limited to letters, digits and ``_-./ ``: MLflow refuses other characters.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noisydeq.errors import NoisyDEQError

TRACKERS = ("tensorboard", "wandb", "mlflow")
#: the package each tracker needs and how to install it
INSTALL = {"tensorboard": ("tensorboard", "pip install 'noisydeq[tensorboard]'"),
           "wandb": ("wandb", "pip install 'noisydeq[wandb]'"),
           "mlflow": ("mlflow", "pip install 'noisydeq[mlflow]'")}


def _missing(name: str, err: Exception) -> NoisyDEQError:
    package, command = INSTALL[name]
    return NoisyDEQError(f"--tracker {name}: the {package} package is not installed "
                         f"({err.__class__.__name__}: {err}); install it with: {command}")


def tag(text: str) -> str:
    """``text`` as a tag every tracker accepts (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


class Backend:
    """What a tracker does: parameters once, scalars at steps, then close."""

    def params(self, values: dict[str, str]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def scalar(self, name: str, value: float, step: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class TensorBoard(Backend):
    def __init__(self, logdir: Path) -> None:
        try:
            import tensorboard  # noqa: F401  (torch's writer needs it; its error is vague)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise _missing("tensorboard", err) from None
        self.writer = SummaryWriter(log_dir=str(logdir))

    def params(self, values: dict[str, str]) -> None:
        text = "\n".join(f"- **{k}**: `{v}`" for k, v in values.items())
        self.writer.add_text("command", text, 0)

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandB(Backend):
    def __init__(self, logdir: Path, name: str) -> None:
        try:
            import wandb
        except ImportError as err:
            raise _missing("wandb", err) from None
        logdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "noisydeq"),
                              dir=str(logdir), name=name, reinit=True)
        self.steps: dict[str, str] = {}

    def params(self, values: dict[str, str]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def scalar(self, name: str, value: float, step: int) -> None:
        # every series has its own x (epoch, SNR): a step metric per series
        x = f"{name}/step"
        if name not in self.steps:
            self.run.define_metric(name, step_metric=x)
            self.steps[name] = x
        self.run.log({name: value, x: step})

    def close(self) -> None:
        self.run.finish()


class MLflow(Backend):
    def __init__(self, logdir: Path | None, name: str) -> None:
        try:
            import mlflow
        except ImportError as err:
            raise _missing("mlflow", err) from None
        if logdir is not None:
            logdir.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(logdir.resolve().as_uri())
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)

    def params(self, values: dict[str, str]) -> None:
        self.mlflow.log_params({k: v[:500] for k, v in values.items()})

    def scalar(self, name: str, value: float, step: int) -> None:
        self.mlflow.log_metric(name, value, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _snr_steps(snrs: list[float]) -> tuple[Callable[[float], int], str]:
    """Step of a finite SNR level and the tag suffix: the dB value itself when every level
    is an integer, else tenths of a dB."""
    if all(float(s).is_integer() for s in snrs):
        return (lambda s: int(s)), ""
    return (lambda s: int(round(10 * s))), " (x0.1 dB)"


class Tracker:
    """Turns the command's events into tracker calls (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.closed = False

    def __call__(self, record: dict[str, Any]) -> None:
        if self.closed:
            return
        event = record.get("event")
        if event == "start":
            self.backend.params({"command": str(record.get("command")),
                                 "argv": " ".join(map(str, record.get("argv") or [])),
                                 "version": str(record.get("version"))})
        elif event == "epoch":
            model = tag(str(record.get("model") or "model"))
            step = int(record.get("epoch", 0))
            for key, value in record.items():
                if key in ("epoch", "epochs", "ts", "elapsed", "pid") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.backend.scalar(f"train/{model}/{tag(key)}", float(value), step)
        elif event == "cell":
            self._cell(record)
        elif event in ("end", "error"):
            if isinstance(record.get("seconds"), (int, float)):
                self.backend.scalar("run/seconds", float(record["seconds"]), 0)
            self.backend.scalar("run/status", float(record.get("status", 0) or 0), 0)
            self.close()

    def _cell(self, record: dict[str, Any]) -> None:
        values = record.get("values") or []
        finite = [float(v["snr_db"]) for v in values if _finite(v.get("snr_db"))]
        step_of, suffix = _snr_steps(finite)
        for v in values:
            value = v.get("value")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            model = tag(f"{v.get('model')}/chip{v.get('chip', 0)}")
            metric = tag(str(v.get("metric", "metric")))
            if _finite(v.get("snr_db")):
                self.backend.scalar(f"{metric}/{model}{suffix}", float(value),
                                    step_of(float(v["snr_db"])))
            else:
                self.backend.scalar(f"{metric}_no_noise/{model}", float(value), 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.close()


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def open_tracker(name: str, logdir: str | os.PathLike | None, run_name: str) -> Tracker:
    """The tracker ``name`` (:data:`TRACKERS`) writing under ``logdir`` (TensorBoard and
    W&B default: ``./tracker``; MLflow: its own default, ``MLFLOW_TRACKING_URI``), its run
    named ``run_name``. TensorBoard writes into ``<logdir>/<run_name>/`` whether or not
    ``logdir`` was given (a given one got the events straight in it, so two runs' events
    mixed in one folder while the default kept them apart); W&B and MLflow keep their runs
    apart by name."""
    if name not in TRACKERS:
        raise NoisyDEQError(f"--tracker: unknown tracker {name!r}; choose one of "
                            f"{', '.join(TRACKERS)}")
    path = Path(logdir) if logdir is not None else None
    if name == "tensorboard":
        return Tracker(TensorBoard((path or Path("tracker")) / run_name))
    if name == "wandb":
        return Tracker(WandB(path or Path("tracker"), run_name))
    return Tracker(MLflow(path, run_name))
