"""The Pareto front of speed against fidelity: the entries no other entry beats on both."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (runtime, PSNR) points that no other point dominates (as fast or faster
    and at least as good, strictly better in one), fastest first. Equal points are all kept:
    neither dominates the other.

    A sweep from the fastest: a point is on the front when it is better than every faster one;
    among equal runtimes the best comes first, so the others fall behind it."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        runtime, psnr = points[i]
        if not front:
            front.append(i)
            continue
        best_runtime, best_psnr = points[front[-1]]
        if psnr > best_psnr or (psnr == best_psnr and runtime == best_runtime):
            front.append(i)
    return front
