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


def correct(logits: Tensor, y: Tensor, diverged: Tensor | None = None) -> Tensor:
    """(B,) bool: arg-max equals ``y``, finite logits, and (``diverged``) a converged solve."""
    ok = (logits.argmax(1) == y) & logits.isfinite().reshape(len(logits), -1).all(1)
    return ok if diverged is None else ok & ~diverged.to(ok.device)


def robust_correct(clean_logits: Tensor, adv_logits: Tensor, y: Tensor, *,
                   clean_diverged: Tensor | None = None,
                   adv_diverged: Tensor | None = None) -> Tensor:
    """(B,) bool: correct on the clean input *and* on the attacked one (module docstring)."""
    return correct(clean_logits, y, clean_diverged) & correct(adv_logits, y, adv_diverged)
