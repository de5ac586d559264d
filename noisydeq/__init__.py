"""noisydeq: Deep Equilibrium and feed-forward networks on simulated noisy analog/optical hardware.

The science follows Rahmani et al., "Regularizing the Infinite: Improved Generalization
Performance with Deep Equilibrium Models" (equation numbers in docstrings refer to it).
"""

__version__ = "0.1.0"

from noisydeq.errors import NoisyDEQError  # noqa: E402

__all__ = ["NoisyDEQError", "__version__", "load_results"]


def __getattr__(name: str):  # lazy: ``import noisydeq`` stays free of torch and pandas
    if name == "load_results":
        from noisydeq.loading import load_results

        return load_results
    raise AttributeError(f"module 'noisydeq' has no attribute {name!r}")
