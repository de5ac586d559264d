"""One definition of robust accuracy for every table and every selection in noisydeq.

A sample is *robust* when the model classifies it correctly on its clean input **and** on
its attacked input — AutoAttack's definition (Croce & Hein 2020: its evaluation marks the
points classified correctly clean and attacks only those; the rest count as not robust).
A sample the model gets wrong clean is not robust, even when
the perturbation happens to move it into its class (a random start, a noisy forward or a
corruption can do that). So robust accuracy is at most clean accuracy sample by sample, and
at ε = 0 — the attacked input is the clean one, judged under the same noise draw — it *is*
the clean accuracy.

A prediction is correct when its arg-max is the label, its logits are finite and, for a
DEQ, its solve did not diverge (``diverged``, when the caller has the flags).

Per-position tasks (prefix sums, mazes: logits (B, K, L) or (B, K, H, W), labels (B, L) /
(B, H, W)) follow the tasks' metric (:func:`noisydeq.tasks.base.sample_correct`): a sample
is correct only when *every* position is right, so it is robust when every position is
right on the clean input and every position is right on the attacked one. Since that
all-positions count saturates (one wrong bit of 32 loses the string), the attack table
also reports the per-position form (:func:`robust_position_fraction`): a position counts
when it is right on both inputs, and the fraction is over all positions of all samples.
For one label per sample both functions reduce to the per-sample rule, bit for bit.

Users: the attack grid (:mod:`noisydeq.attacks.runner`, each defence judged against its
own clean prediction), the early-state choice (:mod:`noisydeq.attacks.defences`), the
adversarial-training checkpoint selection (:mod:`noisydeq.adversarial.selection`), the
certification's PGD (:mod:`noisydeq.certify.pgd`) and the Lyapunov experiment's attack
table (:mod:`noisydeq.analysis.lyapunov_experiment`).
"""

from __future__ import annotations

from torch import Tensor

#: the rule's name, part of the cache key of every result that counts robust samples
#: (results counted before it — adversarial input correct, clean input ignored — are not
#: reused)
RULE = "adv-and-clean"


def position_correct(logits: Tensor, y: Tensor, diverged: Tensor | None = None) -> Tensor:
    """(B, P) bool: position p of sample b is right — its arg-max over the classes
    (dimension 1) equals ``y``, the sample's logits are all finite and (``diverged``) its
    solve converged. P = 1 for one label per sample."""
    b = len(logits)
    ok = (logits.argmax(1) == y).reshape(b, -1)
    ok = ok & logits.isfinite().reshape(b, -1).all(1, keepdim=True)
    return ok if diverged is None else ok & ~diverged.to(ok.device).reshape(b, 1)


def correct(logits: Tensor, y: Tensor, diverged: Tensor | None = None) -> Tensor:
    """(B,) bool: arg-max equals ``y`` (at every position, for a per-position task), finite
    logits, and (``diverged``) a converged solve."""
    if logits.ndim > 2:  # a label per position: every position right
        return position_correct(logits, y, diverged).all(1)
    ok = (logits.argmax(1) == y) & logits.isfinite().reshape(len(logits), -1).all(1)
    return ok if diverged is None else ok & ~diverged.to(ok.device)


def robust_correct(clean_logits: Tensor, adv_logits: Tensor, y: Tensor, *,
                   clean_diverged: Tensor | None = None,
                   adv_diverged: Tensor | None = None) -> Tensor:
    """(B,) bool: correct on the clean input *and* on the attacked one (module docstring)."""
    return correct(clean_logits, y, clean_diverged) & correct(adv_logits, y, adv_diverged)


def robust_position_fraction(clean_logits: Tensor, adv_logits: Tensor, y: Tensor, *,
                             clean_diverged: Tensor | None = None,
                             adv_diverged: Tensor | None = None) -> float:
    """Fraction of all positions (of all samples) right on the clean input *and* on the
    attacked one — the per-position robust accuracy of a per-position task."""
    ok = (position_correct(clean_logits, y, clean_diverged)
          & position_correct(adv_logits, y, adv_diverged))
    return float(ok.double().mean())
