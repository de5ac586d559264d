"""Generated algorithmic tasks (App. D.4/E.4): labels checked against independent computations."""

from collections import deque

import numpy as np
import pytest
import torch

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks import load_task
from noisydeq.tasks.base import sample_correct
from noisydeq.tasks.mazes import TEST_SIZES


def test_prefix_sum_labels_are_the_cumulative_xor():
    t = load_task("prefix_sums", seed=4, n_train=200, n_test=50)
    assert t.x_train.shape == (200, 1, 32) and t.y_train.shape == (200, 32)
    for x, y in ((t.x_train, t.y_train), t.shifted(512, 20), t.shifted(16, 20)):
        bits = x[:, 0].long()
        assert set(bits.unique().tolist()) <= {0, 1}
        for row, lab in zip(bits.tolist(), y.tolist(), strict=True):
            acc, want = 0, []
            for b in row:  # direct cumulative XOR, bit by bit
                acc ^= b
                want.append(acc)
            assert lab == want


def bfs_all_paths_count(open_, start, goal, limit=3):
    """Number of simple 4-connected paths from start to goal (enumerated, capped)."""
    n = open_.shape[0]
    count = 0
    stack = [(start, {start})]
    while stack and count < limit:
        node, seen = stack.pop()
        if node == goal:
            count += 1
            continue
        r, c = node
        for a, b in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= a < n and 0 <= b < n and open_[a, b] and (a, b) not in seen:
                stack.append(((a, b), seen | {(a, b)}))
    return count


def shortest_path_bfs(open_, start, goal):
    n = open_.shape[0]
    dist = {start: 0}
    q = deque([start])
    while q:
        r, c = q.popleft()
        for a, b in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= a < n and 0 <= b < n and open_[a, b] and (a, b) not in dist:
                dist[(a, b)] = dist[(r, c)] + 1
                q.append((a, b))
    return dist


@pytest.mark.parametrize("size", [5, 9, 13, 21])
def test_every_maze_has_one_path_and_the_label_is_it(size):
    t = load_task("mazes", seed=1, n_train=5, n_test=5)
    x, y = t.shifted(size, 12)
    assert x.shape == (12, 3, size, size) and y.shape == (12, size, size)
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        open_ = xi[0] == 0
        start = tuple(int(v) for v in np.argwhere(xi[1] == 1)[0])
        goal = tuple(int(v) for v in np.argwhere(xi[2] == 1)[0])
        assert start != goal and open_[start] and open_[goal]
        assert (xi[1].sum(), xi[2].sum()) == (1, 1)
        # the open pixels form a tree (connected, edges = nodes - 1): one path between any two
        dist = shortest_path_bfs(open_, start, goal)
        assert len(dist) == int(open_.sum())
        edges = int((open_[1:] & open_[:-1]).sum() + (open_[:, 1:] & open_[:, :-1]).sum())
        assert edges == int(open_.sum()) - 1
        if size <= 9:
            assert bfs_all_paths_count(open_, start, goal) == 1
        # the label is the path: its pixels are open, it has dist(goal) + 1 pixels, and each
        # label pixel lies on a shortest route (dist from start + dist to goal = total)
        back = shortest_path_bfs(open_, goal, start)
        on = {(int(r), int(c)) for r, c in np.argwhere(yi == 1)}
        want = {p for p in dist if dist[p] + back[p] == dist[goal]}
        assert on == want and len(on) == dist[goal] + 1


def test_matrix_add_targets_exact():
    t = load_task("matrix_add", seed=2, n_train=64, n_test=16)
    assert (t.in_features, t.out_features) == (800, 400) and t.kind == "regression"
    for s in (0.1, 1.0, 500.0):
        x, y = t.shifted(s, 32)
        a, b = x[:, :400], x[:, 400:]
        assert float(x.abs().max()) <= s
        assert torch.equal(y, a + b)  # float32 sum, correctly rounded
        exact = a.double() + b.double()
        assert float((y.double() - exact).abs().max()) <= float(exact.abs().max()) * 2**-24
    assert float(t.x_train.abs().max()) <= 1.0


def test_shifted_sets_are_seeded_and_train_size_is_the_heldout_split():
    a = load_task("mazes", seed=3, n_train=4, n_test=6)
    b = load_task("mazes", seed=3, n_train=4, n_test=6)
    assert torch.equal(a.shifted(13, 3)[0], b.shifted(13, 3)[0])
    assert not torch.equal(a.shifted(13, 3)[0], load_task("mazes", seed=4, n_train=4,
                                                          n_test=6).shifted(13, 3)[0])
    assert torch.equal(a.shifted(9)[0], a.x_test)
    assert a.options == {"size": 9, "n_train": 4, "n_test": 6} and a.in_shape == (3, 9, 9)
    assert a.test_shifts == TEST_SIZES


def test_sample_correct_needs_every_position():
    y = torch.tensor([[0, 1, 1], [1, 1, 0]])
    out = torch.nn.functional.one_hot(y, 2).permute(0, 2, 1).float()
    assert sample_correct(out, y).tolist() == [True, True]
    out[1, :, 2] = torch.tensor([0.0, 1.0])
    assert sample_correct(out, y).tolist() == [True, False]
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert sample_correct(logits, torch.tensor([1, 1])).tolist() == [True, False]


@pytest.mark.parametrize("name,options,match", [
    ("prefix_sums", {"length": 0}, "length"),
    ("prefix_sums", {"length": -3}, "length"),
    ("prefix_sums", {"n_train": 0}, "n_train"),
    ("mazes", {"size": 10}, "odd"),
    ("mazes", {"size": 3}, ">= 5"),
    ("mazes", {"size": -9}, "size"),
    ("mazes", {"n_test": 0}, "n_test"),
    ("matrix_add", {"scale": 0}, "scale"),
    ("matrix_add", {"scale": -1.0}, "scale"),
    ("matrix_add", {"scale": float("inf")}, "scale"),
    ("digits", {"size": 9}, "no options"),
    ("mazes", {"length": 9}, "unknown option .length.*allowed: size"),
    ("prefix_sums", {"lenght": 9}, "did you mean .length."),
])
def test_bad_sizes_are_one_clear_error(name, options, match):
    with pytest.raises(NoisyDEQError, match=match):
        load_task(name, **options)


def test_bad_test_shift_is_one_clear_error():
    t = load_task("mazes", seed=0, n_train=2, n_test=2)
    with pytest.raises(NoisyDEQError, match="odd"):
        t.shifted(12, 2)
    with pytest.raises(NoisyDEQError, match="length"):
        load_task("prefix_sums", n_train=2, n_test=2).shifted(0, 2)
    with pytest.raises(NoisyDEQError, match="scale"):
        load_task("matrix_add", n_train=2, n_test=2).shifted(-5, 2)
