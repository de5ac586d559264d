"""The typed settings of a certification run and of certify experiment files, re-exported:
they live in the torch-free :mod:`noisydeq.specs.certify`, so ``noisydeq certify`` checks
them before torch loads."""

from noisydeq.specs.certify import CertifyExperimentSpec, CertifySpec, Fig2Spec

__all__ = ["CertifyExperimentSpec", "CertifySpec", "Fig2Spec"]
