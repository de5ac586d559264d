"""digits and regression1d: shapes, scaling, seeded stratified splits, the App. D.1 target."""

import math

import numpy as np
import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks import load_task, task_names
from noisydeq.tasks.base import stratified_split
from noisydeq.tasks.regression1d import target


def test_digits_matches_sklearn_and_is_stratified():
    from sklearn.datasets import load_digits

    raw = load_digits()
    t = load_task("digits", seed=3)
    assert t.kind == "classification" and t.metric_name == "accuracy"
    assert (t.in_features, t.out_features) == (64, 10)
    assert len(t.x_train) + len(t.x_test) == len(raw.data) == 1797
    assert len(t.x_test) == 360
    assert float(t.x_train.min()) == 0.0 and float(t.x_train.max()) == 1.0
    # every (x, y) pair of both splits is a row of sklearn's data scaled by 1/16, used once
    rows = {tuple(r) + (int(c),) for r, c in zip(raw.data / 16.0, raw.target, strict=True)}
    xs = torch.cat([t.x_train, t.x_test]).double().numpy()
    ys = torch.cat([t.y_train, t.y_test])
    ours = [tuple(r) + (int(c),) for r, c in zip(xs, ys, strict=True)]
    assert len(set(ours)) == len(rows) and set(ours) == rows
    # stratified: each class's test count is its proportional quota rounded down or up
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(t.y_test.numpy(), minlength=10)
    quota = counts * 360 / 1797
    assert np.all(test_counts >= np.floor(quota)) and np.all(test_counts <= np.ceil(quota))


def test_direct_read_equals_load_digits_and_falls_back(monkeypatch):
    from sklearn.datasets import load_digits

    from noisydeq.tasks import digits

    raw = load_digits()
    assert digits.bundled_file() is not None  # the fast path is the one taken here
    pixels, labels = digits.read_digits()
    assert np.array_equal(pixels, raw.data) and np.array_equal(labels, raw.target)
    monkeypatch.setattr(digits, "bundled_file", lambda: None)
    pixels, labels = digits.read_digits()
    assert np.array_equal(pixels, raw.data) and np.array_equal(labels, raw.target)


def test_splits_are_seeded():
    a, b, c = load_task("digits", seed=0), load_task("digits", seed=0), load_task("digits", seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_stratified_split_exact_total_and_disjoint():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    tr, te = stratified_split(labels, 4, seed=0)
    assert len(te) == 4 and len(tr) == 11
    assert set(tr.tolist()).isdisjoint(te.tolist())
    assert set(tr.tolist()) | set(te.tolist()) == set(range(15))
    with pytest.raises(NoisyDEQError):
        stratified_split(labels, 0, seed=0)


def test_regression_target_closed_form():
    x = torch.tensor([0.0, 0.25, -0.25, 1.0])
    y = target(x)
    expected = [2 * (math.exp(-(v**2) / (2 * 0.25**2)) - 0.5) for v in x.tolist()]
    assert torch.allclose(y, torch.tensor(expected), atol=1e-7)
    assert float(y[0]) == pytest.approx(1.0)
    assert float(y[1]) == pytest.approx(2 * (math.exp(-0.5) - 0.5))


def test_regression1d_task():
    t = load_task("regression1d", seed=0)
    assert t.kind == "regression" and t.metric_name == "mse"
    assert t.x_train.shape == (8000, 1) and t.x_test.shape == (2000, 1)
    x = torch.cat([t.x_train, t.x_test])
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # uniform on [-1, 1]: mean 0, variance 1/3 (5-sigma bands for 10,000 points)
    assert abs(float(x.mean())) < 5 * math.sqrt(1 / 3 / 10_000)
    assert float(x.var()) == pytest.approx(1 / 3, abs=0.02)
    assert torch.allclose(t.y_test, target(t.x_test))
    assert t.metric(t.y_test + 0.1, t.y_test) == pytest.approx(0.01, rel=1e-5)
    assert not torch.equal(load_task("regression1d", seed=1).x_train, t.x_train)


def test_unknown_task_suggests():
    with pytest.raises(NoisyDEQError, match="did you mean 'digits'"):
        load_task("digit")
    assert set(task_names()) >= {"digits", "regression1d", "mnist", "mnist10k"}
