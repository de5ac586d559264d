"""Typed specs of one attack, one DEQ gradient estimator and one defence, with their parsers.

``AttackSpec`` is one point of an attack grid (name, norm, strength, steps, ...);
``EstimatorSpec`` how an attack gets its gradient through a DEQ (closer-look paper §4,
Yang et al. 2022); ``DefenceSpec`` which state of the forward solve a DEQ predicts with
(§5.2). Command-line strings such as ``unrolled:state=1,k=1,lam=1`` or ``early:n=3`` are
parsed by :func:`parse_estimator` / :func:`parse_defence`; unknown names and keys are one
line with a suggestion. Torch-free, so ``noisydeq attack`` checks them before its heavy
imports; :mod:`noisydeq.attacks.spec` re-exports them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import StrictModel, build, suggest_name
from noisydeq.specs.entropy import EntropySpec

#: attacks that follow the loss gradient (they need a differentiable model)
GRADIENT_ATTACKS = ("pgd", "ifgsm", "apgd-ce", "apgd-t", "fab", "aa", "aa-rand")
#: attacks that only query the model (Square: random search; noise: no query at all)
QUERY_ATTACKS = ("square",)
NOISE_ATTACKS = ("speckle", "salt-pepper")
ATTACKS = GRADIENT_ATTACKS + QUERY_ATTACKS + NOISE_ATTACKS
#: attacks run through torchattacks (AutoAttack and its parts)
LIBRARY_ATTACKS = ("apgd-ce", "apgd-t", "fab", "square", "aa", "aa-rand")
#: noise draws AutoAttack's version for randomised defences (``aa-rand``) averages each
#: APGD gradient over, at the least (Croce & Hein 2020, "rand" version: EOT 20)
AA_RAND_EOT = 20
NORMS = ("linf", "l2")
ESTIMATORS = (
    "backprop", "exact", "phantom", "unrolled", "unrolled-ensemble", "adjoint",
    "adjoint-ensemble",
)
DEFENCES = ("final", "early", "ensemble", "entropy")
#: estimator names that stand for a grid of estimators (expanded by :func:`expand_estimator`)
ESTIMATOR_GRIDS = ("unrolled-grid",)


def draws(name: str, eot: int) -> int:
    """How many draws of the model's noise each gradient of attack ``name`` averages, given
    the grid's ``eot`` (the attack table's ``eot`` column): ``eot`` for PGD, I-FGSM,
    APGD-CE, APGD-T and AutoAttack standard (its APGD parts; its FAB-T takes one draw per
    gradient, its Square none); max(:data:`AA_RAND_EOT`, ``eot``) for ``aa-rand``; 1 for
    FAB (torchattacks' FAB has no EOT: one draw per gradient); 0 for Square and the noise
    attacks (no gradient). Idempotent (``draws(n, draws(n, e)) == draws(n, e)`` for any
    ``e`` ≥ 1), so it also corrects the rows of cells written when the column was ``eot``
    for every gradient attack."""
    if name == "aa-rand":
        return max(AA_RAND_EOT, eot)
    if name == "fab":
        return 1
    if name in GRADIENT_ATTACKS:
        return eot
    return 0


def suggest(kind: str, value: str, allowed: tuple[str, ...]) -> NoisyDEQError:
    """``unknown <kind> '<value>'; did you mean ...? (allowed: ...)`` (the option or field
    that was given is named by the caller's prefix: ``attack: norm: unknown norm 'l3'``)."""
    return NoisyDEQError(suggest_name(kind, value, allowed))


class AttackSpec(StrictModel):
    """One attack at one strength.

    ``eps`` is the strength: the radius of the ℓ∞ ball (0 ≤ ε ≤ 1 on [0, 1] inputs) or the
    ℓ2 ball (ε ≥ 0) for gradient and query attacks, the speckle σ (x + x·n, n ~ N(0, σ²)),
    or the salt-and-pepper fraction p (0 ≤ p ≤ 1). ``steps``: PGD/I-FGSM/APGD/FAB
    iterations. ``alpha``: PGD step size (default 2.5·ε/steps, Madry et al. 2018; I-FGSM:
    ε/steps). ``restarts``: random restarts (per sample the first that fools the model, else
    the one of highest loss). ``eot``: gradients averaged over this many draws of the
    model's own noise (expectation over transformation). ``queries``: Square's budget
    (AutoAttack: 5000).
    """

    name: Literal["pgd", "ifgsm", "apgd-ce", "apgd-t", "fab", "aa", "aa-rand", "square",
                  "speckle", "salt-pepper"] = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(default=0.3, ge=0.0)
    steps: int = Field(default=10, ge=1)
    alpha: float | None = Field(default=None, gt=0.0)
    random_start: bool = True
    restarts: int = Field(default=1, ge=1)
    eot: int = Field(default=1, ge=1)
    queries: int = Field(default=5000, ge=1)

    @model_validator(mode="after")
    def _strength(self) -> AttackSpec:
        if not math.isfinite(self.eps):
            raise ValueError("eps must be a finite number")
        if self.norm == "linf" and self.name not in NOISE_ATTACKS and self.eps > 1.0:
            raise ValueError(f"eps {self.eps:g} is outside [0, 1] (inputs lie in [0, 1])")
        if self.name == "salt-pepper" and self.eps > 1.0:
            raise ValueError(f"salt-and-pepper fraction {self.eps:g} is outside [0, 1]")
        if self.name == "fab" and self.norm == "l2" and self.eps <= 0:
            raise ValueError("fab needs eps > 0")
        return self

    @property
    def needs_gradient(self) -> bool:
        return self.name in GRADIENT_ATTACKS

    @property
    def draws(self) -> int:
        """Noise draws each of this attack's gradients averages (:func:`draws`)."""
        return draws(self.name, self.eot)

    @property
    def step_size(self) -> float:
        """α: the given one, else ε/steps (I-FGSM) or 2.5·ε/steps (PGD)."""
        if self.alpha is not None:
            return self.alpha
        return self.eps / self.steps * (1.0 if self.name == "ifgsm" else 2.5)

    def label(self) -> str:
        """Short readable name, e.g. ``PGD-10 linf`` or ``speckle``."""
        if self.name in ("pgd", "ifgsm"):
            return f"{self.name.upper()}-{self.steps} {self.norm}"
        if self.name in NOISE_ATTACKS:
            return self.name
        return f"{self.name} {self.norm}"


#: the ``exact`` estimator's backward method when ``bsolver`` is unset (was ``fixed-point``
#: until the GMRES fallback: Anderson alone left 12-24 % of a digits DEQ's inputs
#: unconverged, docs/robustness-attack-cost.md)
EXACT_BSOLVER = "fallback"
#: command-line names of backward methods: ``anderson`` is the fixed-point iteration alone
BSOLVER_ALIASES = {"anderson": "fixed-point"}


class EstimatorSpec(StrictModel):
    """How a gradient attack differentiates a DEQ (closer-look paper §2.1, §4, §5.1).

    ``backprop``: autograd through the model as it is (FFW; a DEQ uses its own gradient
    method). ``exact``: implicit-function-theorem gradient at the fixed point (their Eq. 2).
    ``phantom``: ``k`` damped steps with ``lam`` from z* (their Eq. 4-6). ``unrolled``:
    the same unroll from the intermediate state z_``state`` (Eq. 13-16; ``state`` None =
    the solution, i.e. phantom). ``adjoint``: the simultaneous adjoint u_{n+1} = u_n −
    β B_nᵀ v_n with the forward solver's inverse-Jacobian estimate B_n (Eq. 9-11),
    gradient at ``state`` (None = the last). ``*-ensemble``: the sum over all states
    (Eq. 17). ``warm``: warm-start each solve from the previous call's fixed point
    (final-state estimators only). ``btol`` (``exact`` only): relative-residual tolerance
    of the IFT backward solve u = J_fᵀ u + ∂L/∂z* (their Eq. 3); None = the gradient
    default, rel 1e-6 within 40 Anderson iterations. An attack follows only the gradient's
    direction (its sign under ℓ∞), so a looser solve can serve; ``docs/robustness-attack-cost.md``
    measures the gradient's cosine with the converged one and the robust accuracy at 1e-3.
    ``bsolver`` (``exact`` only): how that backward system is solved — ``fixed-point``
    (the Anderson iteration above alone; ``anderson`` on the command line), ``gmres`` (the
    linear system (I − J_fᵀ) u = ∂L/∂z* by GMRES, same tolerance and cap) or ``fallback``
    (Anderson, then GMRES on the inputs it left unconverged only, from their Anderson
    iterate); None = :data:`EXACT_BSOLVER`, ``fallback``. Cells of ``exact`` with
    ``bsolver`` unset carry :meth:`cell_tag` in their key (the default changed from
    ``fixed-point``; cells computed with the old default are not reused).
    """

    name: Literal["backprop", "exact", "phantom", "unrolled", "unrolled-ensemble", "adjoint",
                  "adjoint-ensemble"] = "exact"
    k: int = Field(default=5, ge=1)
    lam: float = Field(default=0.5, gt=0.0, le=1.0)
    state: int | None = Field(default=None, ge=1)
    beta: float = Field(default=0.5, gt=0.0, le=1.0)
    warm: bool = True
    btol: float | None = Field(default=None, gt=0.0, lt=1.0)
    bsolver: Literal["fixed-point", "gmres", "fallback"] | None = None

    @model_validator(mode="after")
    def _btol_for_exact(self) -> EstimatorSpec:
        if self.btol is not None and self.name != "exact":
            raise ValueError(f"btol (the IFT backward solve's tolerance) belongs to 'exact', "
                             f"not '{self.name}'")
        if self.bsolver is not None and self.name != "exact":
            raise ValueError(f"bsolver (the IFT backward solve's method) belongs to 'exact', "
                             f"not '{self.name}'")
        return self

    def key(self) -> str:
        """Stable identity (JSON) for resumable cells: ``btol`` and ``bsolver`` appear only
        when set, so cells written before they existed keep their keys."""
        unset = {k for k in ("btol", "bsolver") if getattr(self, k) is None}
        return self.model_dump_json(exclude=unset or None)

    def backward_method(self) -> str:
        """The ``exact`` backward solve's method: ``bsolver``, or :data:`EXACT_BSOLVER`."""
        return self.bsolver if self.bsolver is not None else EXACT_BSOLVER

    def cell_tag(self) -> str:
        """What a resumable cell's key adds for this estimator: ``bwd=<method>|`` for
        ``exact`` with ``bsolver`` unset (whose meaning changed with the default), else
        nothing (those keys are unchanged)."""
        if self.name == "exact" and self.bsolver is None:
            return f"bwd={EXACT_BSOLVER}|"
        return ""

    def label(self) -> str:
        """Readable name with the parameters that matter, e.g. ``unrolled(z1 k=1 λ=1)``."""
        n = self.name
        at = "" if self.state is None else f"z{self.state} "
        if n in ("phantom", "unrolled", "unrolled-ensemble"):
            return f"{n}({at if n == 'unrolled' else ''}k={self.k} λ={self.lam:g})"
        if n in ("adjoint", "adjoint-ensemble"):
            return f"{n}({at if n == 'adjoint' else ''}β={self.beta:g})"
        if n == "exact" and (self.btol is not None or self.bsolver is not None):
            opts = [f"btol={self.btol:g}"] if self.btol is not None else []
            opts += [self.bsolver] if self.bsolver is not None else []
            return f"exact({','.join(opts)})"
        return n


class DefenceSpec(StrictModel):
    """Which state a DEQ predicts with (closer-look §5.2): ``final`` (the solution),
    ``early`` (state z_n; ``n`` None = chosen on a validation split, highest accuracy under
    PGD-10), ``ensemble`` (per-sample mean of the states z_1 … z_N), ``entropy`` (the
    final state — or z_``n`` — of a solve with test-time input entropy reduction,
    regulation paper Algorithm 1, options ``entropy``)."""

    name: Literal["final", "early", "ensemble", "entropy"] = "final"
    n: int | None = Field(default=None, ge=1)
    entropy: EntropySpec | None = None

    @model_validator(mode="after")
    def _entropy(self) -> DefenceSpec:
        if self.name == "entropy" and self.entropy is None:
            self.entropy = EntropySpec()
        if self.name != "entropy" and self.entropy is not None:
            raise ValueError(f"entropy options belong to the 'entropy' defence, not '{self.name}'")
        return self

    def label(self) -> str:
        if self.name == "entropy" and self.entropy is not None:
            at = f"z{self.n} " if self.n else ""
            return f"entropy({at}{self.entropy.label()})"
        return f"early(z{self.n})" if self.name == "early" and self.n else self.name


def _parse_named(kind: str, text: str, allowed: tuple[str, ...], model: type[StrictModel],
                 keys: dict[str, str]) -> Any:
    """``name`` or ``name:key=value,key=value`` → validated ``model``."""
    text = str(text).strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in allowed:
        raise suggest(kind, name, allowed)
    data: dict[str, Any] = {"name": name}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise NoisyDEQError(f"{kind} '{text}': expected key=value after ':', got '{item}'")
        if key not in keys:
            raise suggest(f"{kind} parameter", key, tuple(keys))
        field = keys[key]
        v = value.strip()
        if field.startswith("entropy."):
            sub = field.split(".", 1)[1]
            try:
                val: Any = int(v) if sub in ("r", "tf", "iters") else float(v)
            except ValueError:
                raise NoisyDEQError(f"{kind} '{text}': {key} must be a number, got '{v}'") from None
            if not math.isfinite(val):
                raise NoisyDEQError(f"{kind} '{text}': {key} must be a finite number, got {v}")
            data.setdefault("entropy", {})[sub] = val
            continue
        if field == "bsolver":
            methods = ("fallback", "fixed-point", "anderson", "gmres")
            if v.lower() not in methods:
                raise NoisyDEQError(f"{kind} '{text}': "
                                    + suggest_name("bsolver", v.lower(), methods))
            data[field] = BSOLVER_ALIASES.get(v.lower(), v.lower())
        elif field == "warm":
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise NoisyDEQError(f"{kind} '{text}': warm must be true or false, got '{v}'")
            data[field] = v.lower() in ("true", "1", "yes")
        else:
            whole = field in ("k", "state", "n")
            allowed = _allowed_range(model, field)
            what = f"{'an integer' if whole else 'a number'}{allowed and ' ' + allowed}"
            try:
                data[field] = int(v) if whole else float(v)
            except ValueError:
                raise NoisyDEQError(f"{kind} '{text}': {key} must be {what}, got '{v}'") from None
            if not _in_range(model, field, data[field]):
                raise NoisyDEQError(f"{kind} '{text}': {key} must be {what}, got {v}")
    return build(model, data, where=kind)


def _bounds(model: type[StrictModel], field: str) -> dict[str, float]:
    """The numeric bounds (``ge``, ``gt``, ``le``, ``lt``) pydantic holds for ``field``."""
    out = {}
    for c in model.model_fields[field].metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(c, attr, None) is not None:
                out[attr] = float(getattr(c, attr))
    return out


def _allowed_range(model: type[StrictModel], field: str) -> str:
    """``field``'s range in words: ``>= 1``, ``in (0, 1]``, ``in (0, 1)``; '' for none."""
    b = _bounds(model, field)
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return ""


def _in_range(model: type[StrictModel], field: str, v: float) -> bool:
    """``v`` satisfies ``field``'s bounds (NaN does not)."""
    b = _bounds(model, field)
    return (v == v and v >= b.get("ge", -math.inf) and v > b.get("gt", -math.inf)
            and v <= b.get("le", math.inf) and v < b.get("lt", math.inf))


def parse_estimator(text: str) -> EstimatorSpec:
    """``exact``, ``exact:btol=1e-3``, ``exact:bsolver=gmres`` (``fallback``, ``anderson``),
    ``phantom:k=5,lam=0.5``, ``unrolled:state=1,k=1,lam=1``, ``adjoint:beta=0.5``."""
    keys = {"k": "k", "lam": "lam", "lambda": "lam", "state": "state", "n": "state",
            "beta": "beta", "warm": "warm", "btol": "btol", "bsolver": "bsolver"}
    return _parse_named("estimator", text, ESTIMATORS, EstimatorSpec, keys)


def parse_defence(text: str) -> DefenceSpec:
    """``final``, ``early`` (n chosen on validation), ``early:n=3``, ``ensemble``,
    ``entropy[:beta=0.0078,r=10,tf=2,eps=0.031,n=7]`` (Algorithm 1; T_f as ``tf``)."""
    keys = {"n": "n", "beta": "entropy.beta", "r": "entropy.r", "tf": "entropy.tf",
            "t_f": "entropy.tf", "eps": "entropy.eps", "iters": "entropy.iters"}
    return _parse_named("defence", text, DEFENCES, DefenceSpec, keys)


def expand_estimator(text: str) -> list[str]:
    """The estimators one ``--estimators`` item stands for: itself, or for
    ``unrolled-grid[:n=8,k=9,lam=0.5/1]`` the intermediate-state attacks of the regulation
    paper's Eq. 11 — ``unrolled:state=i,k=K,lam=λ`` for i = 1…n, K = 1…k and each λ
    (default 8 × 9 × {0.5, 1}: its 144 attacks)."""
    text = str(text).strip()
    name, _, rest = text.partition(":")
    if name.strip().lower() not in ESTIMATOR_GRIDS:
        parse_estimator(text)
        return [text]
    opts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise NoisyDEQError(f"estimator '{text}': expected key=value after ':', got '{item}'")
        if key.strip() not in ("n", "k", "lam"):
            raise suggest("estimator parameter", key.strip(), ("n", "k", "lam"))
        opts[key.strip()] = value.strip()
    try:
        n, k = int(opts.get("n", 8)), int(opts.get("k", 9))
        lams = [float(v) for v in opts.get("lam", "0.5/1").split("/") if v.strip()]
    except ValueError:
        raise NoisyDEQError(f"estimator '{text}': n and k are integers, lam numbers "
                            "separated by '/' (e.g. lam=0.5/1)") from None
    if n < 1 or k < 1 or not lams:
        raise NoisyDEQError(f"estimator '{text}': n and k must be >= 1 and lam non-empty")
    out = [f"unrolled:state={i},k={kk},lam={lam:g}" for lam in lams for i in range(1, n + 1)
           for kk in range(1, k + 1)]
    for item in out[:1] + out[-1:]:
        parse_estimator(item)  # λ outside (0, 1]: one line
    return out


def check_attack_name(name: str) -> str:
    """A known attack name, or one line with a suggestion."""
    if name not in ATTACKS:
        raise suggest("attack", name, ATTACKS)
    return name


def check_norm(norm: str) -> str:
    """``linf`` or ``l2`` (``Linf``/``inf``/``L2`` accepted), else one line."""
    n = str(norm).strip().lower()
    n = {"inf": "linf", "linfty": "linf", "2": "l2"}.get(n, n)
    if n not in NORMS:
        raise suggest("norm", norm, NORMS)
    return n
