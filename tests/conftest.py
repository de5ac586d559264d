"""Suite-wide fixtures.

The suite's models are tiny (batches of tens, widths of tens to hundreds): on a 2-core
machine one intra-op thread is several times faster than two (no spin-wait hand-offs) and
immune to a busy neighbour. Each test runs with one thread; the previous count is restored.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_not_cached_warnings():
    """The "not cached" warnings ``store.not_cached`` says once per process (and kind) are
    said again in each test: one test's warning never hides the same one in a later test."""
    from noisydeq import store

    store._NOT_CACHED.clear()
    yield
    store._NOT_CACHED.clear()


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    """Tests never read or fill the user's model cache: $NOISYDEQ_CACHE points to a temp dir
    (tests that need their own cache still set it themselves)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NOISYDEQ_CACHE", str(tmp_path_factory.mktemp("noisydeq-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def digits():
    """The digits task (data seed 0), loaded once per test module."""
    from noisydeq.tasks import load_task

    return load_task("digits", seed=0)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (127.0.0.1, 2 CPUs) for every ``--backend ray`` test of the
    session (a start costs ~10 s), shut down at the end; skipped without Ray. Commands
    that find it joined use it and leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=80 * 2**20, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.fixture
def family_trainings(monkeypatch):
    """What ``families.train_model`` did, call by call (``"trained"`` / ``"loaded"``): a resume
    that serves every cell must leave it empty."""
    from noisydeq import families

    calls: list[str] = []
    real = families.train_model

    def counting(*a, **k):
        res = real(*a, **k)
        calls.append("loaded" if res.loaded else "trained")
        return res

    monkeypatch.setattr(families, "train_model", counting)
    return calls


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A fresh ``$NOISYDEQ_CACHE`` under ``tmp_path``, the figure cache on (whatever the
    environment says)."""
    from noisydeq import figure_cache

    root = tmp_path / "cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(root))
    monkeypatch.delenv(figure_cache.ENV, raising=False)
    return root
