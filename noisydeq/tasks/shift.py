"""Tasks with test sets under a distribution shift: longer strings, larger mazes, wider scales.

The algorithmic tasks of the paper's App. D.4 / E.4 (Fig. 18) train at one problem size and
test at others: prefix sums on longer bit strings, mazes on larger grids, matrix addition with
entries from a wider range. A :class:`ShiftTask` is an ordinary :class:`~noisydeq.tasks.base.Task`
(its ``x_test`` / ``y_test`` are held-out samples at the training size) plus a generator of
test sets at any other size, each seeded by (task seed, shift) so every run sees the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks.base import Task

Maker = Callable[[float, int, int], tuple[Tensor, Tensor]]
"""make(shift, n, seed) -> (x, y): ``n`` samples at problem size / scale ``shift``."""


@dataclass(frozen=True)
class ShiftTask(Task):
    """A task plus seeded test sets at other sizes (``shift_name``: length, size or scale).

    ``train_shift`` is the size the training and ``x_test`` samples have; ``test_shifts``
    the sizes the paper tests (defaults for experiments); :meth:`shifted` makes a test set
    at any valid size. ``per_position``: the label is one class per position (output
    (B, K, *size)), scored as the fraction of fully correct samples.
    """

    shift_name: str = "size"
    train_shift: float = 0.0
    test_shifts: tuple[float, ...] = ()
    per_position: bool = False
    make: Maker | None = field(default=None, repr=False, compare=False)
    check: Callable[[float], float] | None = field(default=None, repr=False, compare=False)

    def shifted(self, shift: float, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``n`` test samples (default: as many as ``x_test``) at size ``shift``.

        The samples at ``train_shift`` are ``x_test`` itself (the held-out split); every
        other size is generated from ``derive_seed(task seed, name, "test", shift)``.
        """
        from noisydeq.noise import derive_seed

        if self.make is None:
            raise NoisyDEQError(f"task '{self.name}': has no shifted test sets")
        shift = self.check(shift) if self.check is not None else shift
        n = len(self.x_test) if n is None else check_count("n_test", n)
        if shift == self.train_shift and n <= len(self.x_test):
            return self.x_test[:n], self.y_test[:n]
        return self.make(shift, n, derive_seed(self.seed, self.name, "test", float(shift)))


def generated_task(
    name: str, kind: str, *, make: Maker, check: Callable[[float], float], shift_name: str,
    train_shift: float, test_shifts: tuple[float, ...], seed: int, n_train: int, n_test: int,
    in_features: int, out_features: int, source: str, options: dict,
    in_shape: tuple[int, ...] | None = None, per_position: bool = False,
) -> ShiftTask:
    """The :class:`ShiftTask` of a generator: ``n_train + n_test`` samples at ``train_shift``
    drawn by ``make`` from ``derive_seed(seed, name, "train")``, the first ``n_train`` for
    training and the rest held out. Sizes are validated (one line) before anything is made."""
    from noisydeq.noise import derive_seed

    train_shift = check(train_shift)
    check_count("n_train", n_train)
    check_count("n_test", n_test)
    x, y = make(train_shift, n_train + n_test, derive_seed(seed, name, "train"))
    return ShiftTask(
        name=name, kind=kind,  # type: ignore[arg-type]
        x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:],
        in_features=in_features, out_features=out_features, seed=seed, source=source,
        in_shape=in_shape, options=options, shift_name=shift_name, train_shift=train_shift,
        test_shifts=test_shifts, per_position=per_position, make=make, check=check,
    )


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """A whole number of samples ≥ ``minimum``, or one line naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NoisyDEQError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_number(name: str, value: float) -> float:
    """A finite number > 0, or one line naming the field."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NoisyDEQError(f"{name}: must be a positive number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v <= 0:
        raise NoisyDEQError(f"{name}: must be a finite number > 0, got {value!r}")
    return v


def check_shifts(name: str, values: Sequence[float], one: Callable[[float], float]) -> tuple:
    """Each of ``values`` validated by ``one``; a non-empty list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise NoisyDEQError(f"{name}: must be a non-empty list, got {values!r}")
    return tuple(one(v) for v in values)
