"""Pareto fronts: the configurations that no other one beats on both cost (lower) and accuracy (higher)."""
from __future__ import annotations

from typing import List, Sequence

__all__ = ["pareto_front"]


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> List[int]:
    """Indices of the non-dominated points, by increasing cost.

    A point is dominated when another costs no more and scores at least as much, and is strictly better in
    one of the two. Of exact duplicates the first is kept.
    """
    if len(costs) != len(scores):
        raise ValueError(f"costs and scores differ in length ({len(costs)} vs {len(scores)})")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i], i))
    front, best = [], float("-inf")
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front
