"""Certification of many models, here or on a Ray cluster (``noisydeq certify --backend
ray``: one task per (model, ε)).

The driver puts the test tensors and the :class:`~noisydeq.certify.spec.CertifySpec` into
Ray's object store once and each model once (with its envelopes and margins from
:func:`noisydeq.analysis.certified.plan`, computed and checked on the driver before any
work); a task runs :func:`~noisydeq.analysis.certified.certify_member` for its one radius
and returns that radius's rows (one per envelope). Only the cells the run directory lacks
are sent (:mod:`noisydeq.analysis.certify_run`); the driver writes each cell as its task
finishes and alone writes the table, in the local order (model, envelope, ε), so a run
stopped part-way resumes on either backend. A worker that dies is retried by Ray
(:data:`noisydeq.cluster.MAX_RETRIES`); an exception in a task ends the run with its one line.

Same rows as a local run with one torch thread: bounds are computed in float64 and each
radius's PGD draws from ``derive_seed(seed, "pgd", model, ε)`` and the sample index, so
nothing depends on which process certifies which radius; only ``seconds`` (the wall time
of the row) differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from noisydeq import cluster
from noisydeq.analysis.certified import Plan, certify_member, model_label, row_line
from noisydeq.certify.spec import CertifySpec
from noisydeq.cluster import Backend


def _checked(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """(x, y, spec) of the driver's inputs, refused in one line if this worker runs other
    noisydeq code than the driver — the code its cells record (kind ``certify``,
    :attr:`noisydeq.analysis.certify_run.CertifyDir.code_kind`)."""
    from noisydeq.fingerprint import code_fingerprint

    *rest, code = inputs
    cluster.same_code(code, code_fingerprint("certify"))
    return tuple(rest)


def certify_radius(token: str, inputs: list[Any], model: list[Any], i: int,
                   eps: float, first: int = 0) -> list[dict[str, Any]]:
    """A Ray task: the rows (one per envelope, from the ``first``-th: the digital one
    served) of model ``i`` at radius ``eps``. ``inputs`` / ``model`` hold an object
    reference each (in a list, so Ray passes the reference and the worker unpacks it once):
    (x, y, spec, the driver's code fingerprint) and (member, plans)."""
    torch.set_num_threads(1)
    x, y, spec = cluster.kept(token, "inputs", inputs, run=True, make=_checked)
    member, plans = cluster.kept(token, f"model/{i}", model)
    one = spec.model_copy(update={"eps": [eps]})
    return certify_member(member, x, y, one, None, plans[first:])


def certify_cells(
    members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor, y: torch.Tensor,
    spec: CertifySpec, cells: Sequence[Any],
    saved: Callable[[Any, list[dict[str, Any]]], None],
    echo: Callable[[str], None] | None = None, backend: Backend | None = None,
) -> None:
    """Compute ``cells`` (:class:`~noisydeq.analysis.certify_run.CertifyCell`: model
    ``i`` at radius ``eps``, its envelopes from the ``first``-th — the digital one when its
    rows were not served —; ``plans`` from :func:`~noisydeq.analysis.certified.plan`) in
    this process or — ``backend`` a Ray :class:`~noisydeq.cluster.Backend`, its cluster
    joined — one Ray task each (:func:`certify_on_ray`: the same rows but ``seconds``);
    ``saved(cell, rows)`` is called in this process as each one finishes (it writes)."""
    if backend is not None and backend.ray:
        certify_on_ray(members, plans, x, y, spec, cells, saved, echo)
        return
    for c in cells:
        one = spec.model_copy(update={"eps": [c.eps]})
        saved(c, certify_member(members[c.i], x, y, one, echo, plans[c.i][c.first:]))


def certify_on_ray(
    members: Sequence[Any], plans: Sequence[list[Plan]], x: torch.Tensor, y: torch.Tensor,
    spec: CertifySpec, cells: Sequence[Any],
    saved: Callable[[Any, list[dict[str, Any]]], None],
    echo: Callable[[str], None] | None = None,
) -> None:
    """The cells of :func:`certify_cells` computed on the connected Ray cluster (module
    docstring), handed to ``saved`` and echoed as their tasks finish."""
    import ray

    from noisydeq.fingerprint import code_fingerprint

    if not cells:
        return
    ref = ray.put((x.cpu(), y.cpu(), spec, code_fingerprint("certify")))
    token = ref.hex()
    needed = sorted({c.i for c in cells})
    model_refs = {i: ray.put((members[i], list(plans[i]))) for i in needed}
    fn = cluster.remote(certify_radius, "noisydeq-certify-radius")
    order = sorted(range(len(cells)), key=lambda k: (-int(members[cells[k].i].params), k))
    futures = {fn.remote(token, [ref], [model_refs[cells[k].i]], cells[k].i, cells[k].eps,
                         cells[k].first): k for k in order}
    for k, rows in cluster.finished(
            futures, lambda k: f"certifying {model_label(members[cells[k].i])} at ε "
                               f"{cells[k].eps:g}"):
        saved(cells[k], rows)
        if echo is not None:
            for r in rows:
                echo(row_line(r))
