"""``mazes``: perfect mazes and their start-to-goal path (App. E.4, after Schwarzschild et al.).

A maze of size n (odd, ≥ 5) is an n×n pixel grid: the m = (n − 1)/2 × m *cells* sit at odd
coordinates (2i+1, 2j+1), the pixels between two cells are wall or passage, the border is
wall. The passages are a spanning tree of the cell grid carved by a randomised depth-first
search (recursive backtracker, iterative form): every cell is reachable and there is exactly
one simple path between any two of them. Start and goal are two distinct cells drawn
uniformly; the label marks every pixel of the path between them, found by breadth-first
search (in a tree the shortest path is the only one).

Inputs are float (N, 3, n, n): channel 0 walls (1 = wall), channel 1 the start pixel,
channel 2 the goal pixel. Labels are long (N, n, n), 1 on the path (start and goal included).
A model outputs (N, 2, n, n); the metric is the fraction of mazes whose every pixel is right.
Training uses 9×9 mazes (4×4 cells); the paper tests sizes 9 … 59 (:data:`TEST_SIZES`).
Generated from the task seed (NumPy ``Generator``), nothing downloaded. The generator is pure
Python: about 4 ms for a 59×59 maze and 0.1 ms for a 9×9 one.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.tasks.shift import ShiftTask, check_count, generated_task

TRAIN_SIZE = 9
TEST_SIZES = (9, 13, 17, 21, 25, 27, 29, 31, 33, 35, 37, 59)
#: the sizes the CPU experiments test (larger ones cost minutes per model on two cores)
CPU_TEST_SIZES = (9, 13, 17, 21, 25)
N_TRAIN = 10_000
N_TEST = 1_000
_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def check_size(value: float) -> int:
    """A maze size: an odd whole number of pixels ≥ 5 (at least 2×2 cells)."""
    ok = not isinstance(value, bool) and float(value) == int(value)
    if not ok or int(value) < 5 or int(value) % 2 == 0:
        raise NoisyDEQError(
            f"size: a maze is an odd number of pixels >= 5 on a side (walls between cells), "
            f"got {value!r}"
        )
    return int(value)


def carve(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool array, True = open: a perfect maze by randomised depth-first search."""
    m = (size - 1) // 2
    open_ = np.zeros((size, size), dtype=bool)
    seen = np.zeros((m, m), dtype=bool)
    start = (int(rng.integers(m)), int(rng.integers(m)))
    stack = [start]
    seen[start] = True
    open_[2 * start[0] + 1, 2 * start[1] + 1] = True
    while stack:
        i, j = stack[-1]
        nbrs = [(i + di, j + dj) for di, dj in _STEPS
                if 0 <= i + di < m and 0 <= j + dj < m and not seen[i + di, j + dj]]
        if not nbrs:
            stack.pop()
            continue
        a, b = nbrs[int(rng.integers(len(nbrs)))]
        seen[a, b] = True
        open_[i + a + 1, j + b + 1] = True  # the wall pixel between (i, j) and (a, b)
        open_[2 * a + 1, 2 * b + 1] = True
        stack.append((a, b))
    return open_


def bfs_path(open_: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> np.ndarray:
    """(n, n) bool mask of a shortest 4-connected path of open pixels from start to goal."""
    n = open_.shape[0]
    prev = -np.ones((n, n, 2), dtype=np.int64)
    prev[start] = start
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            break
        for dr, dc in _STEPS:
            a, b = r + dr, c + dc
            if 0 <= a < n and 0 <= b < n and open_[a, b] and prev[a, b, 0] < 0:
                prev[a, b] = (r, c)
                queue.append((a, b))
    if prev[goal][0] < 0:
        raise NoisyDEQError("maze: goal not reachable from start")  # cannot happen in a tree
    path = np.zeros((n, n), dtype=bool)
    node = goal
    while node != start:
        path[node] = True
        node = (int(prev[node][0]), int(prev[node][1]))
    path[start] = True
    return path


def one_maze(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Input (3, n, n) float32 (walls, start, goal) and path label (n, n) int64 of one maze."""
    open_ = carve(size, rng)
    m = (size - 1) // 2
    a, b = rng.choice(m * m, size=2, replace=False)
    start = (2 * int(a // m) + 1, 2 * int(a % m) + 1)
    goal = (2 * int(b // m) + 1, 2 * int(b % m) + 1)
    x = np.zeros((3, size, size), dtype=np.float32)
    x[0] = ~open_
    x[1][start] = 1.0
    x[2][goal] = 1.0
    return x, bfs_path(open_, start, goal).astype(np.int64)


def make(size: float, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` mazes of ``size``: inputs (n, 3, size, size) float, labels (n, size, size) long."""
    size, n = check_size(size), check_count("n", n)
    rng = np.random.default_rng(int(seed) % (2**63 - 1))
    xs, ys = zip(*(one_maze(size, rng) for _ in range(n)), strict=True)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def load(
    seed: int = 0, size: int = TRAIN_SIZE, n_train: int = N_TRAIN, n_test: int = N_TEST,
) -> ShiftTask:
    """``n_train`` training and ``n_test`` held-out mazes of ``size`` (seeded)."""
    size = check_size(size)
    return generated_task(
        "mazes", "classification", make=make, check=check_size, shift_name="size",
        train_shift=size, test_shifts=TEST_SIZES, seed=seed, n_train=n_train, n_test=n_test,
        in_features=3, out_features=2,
        source=f"generated: {size}x{size} perfect mazes (randomised DFS), BFS path labels",
        in_shape=(3, size, size),
        options={"size": size, "n_train": n_train, "n_test": n_test}, per_position=True,
    )
