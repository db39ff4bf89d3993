"""The report's domain logic: the Pareto front against the plain definition of dominance, the
choice of best and worst images, and the HTML (escaped, no network resource)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.report.content import BoardRow, ImageFigures, ReportContent, best_and_worst
from services.report.html import render_html
from services.report.pareto import pareto_front


def dominated_by(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """b dominates a: b is at least as fast and as good, and strictly better in one."""
    return b[0] <= a[0] and b[1] >= a[1] and (b[0] < a[0] or b[1] > a[1])


def front_by_definition(points: list[tuple[float, float]]) -> set[int]:
    return {i for i, p in enumerate(points) if not any(dominated_by(p, q) for q in points)}


# Small integer grids: ties in runtime, in PSNR and whole duplicates are frequent.
grid_points = st.lists(st.tuples(st.integers(1, 6).map(float), st.integers(20, 25).map(float)),
                       max_size=12)


@given(grid_points)
def test_pareto_front_is_the_set_of_undominated_points(points: list[tuple[float, float]]) -> None:
    front = pareto_front(points)
    assert set(front) == front_by_definition(points)
    runtimes = [points[i][0] for i in front]
    assert runtimes == sorted(runtimes)  # fastest first, so the plot's line is monotone


def test_pareto_front_of_a_published_like_table() -> None:
    # (runtime ms, PSNR): the 40 ms entry is beaten by the 30 ms one, 900 ms by 500 ms.
    points = [(3239.0, 26.5), (30.0, 27.0), (40.0, 26.9), (500.0, 28.1), (900.0, 28.0)]
    assert pareto_front(points) == [1, 3]


def test_best_and_worst_images_by_psnr() -> None:
    figures = [ImageFigures("1.png", 27.0, 0.95), ImageFigures("2.png", float("inf"), 1.0),
               ImageFigures("3.png", 21.5, 0.90), ImageFigures("4.png", float("nan"), 0.9)]
    chosen = best_and_worst(figures)
    assert [(why, f.image) for why, f in chosen] == [("best", "2.png"), ("worst", "3.png")]
    assert best_and_worst(figures[:1]) == [("best", figures[0])]
    assert best_and_worst([]) == []


def test_html_escapes_names_and_uses_no_network() -> None:
    row = BoardRow(rank=1, team="<script>alert(1)</script>", model_name="m&m.pb", job_id="j1",
                   psnr=22.0, msssim=0.91, mos=None, runtime_ms=120.0,
                   baseline_runtime_ms=1500.0, device="GPU:0", peak_memory_mb=0.0,
                   score_a=10.0, score_b=11.0, score_c=12.0)
    content = ReportContent(title="Track B", track="B", phase="validation", rows=[row],
                            psnr_base=21.0, focus_job="j1")
    html = render_html(content, {"runtime.png"})
    assert "<script>" not in html and "&lt;script&gt;" in html and "m&amp;m.pb" in html
    assert "http://" not in html and "https://" not in html
    cells = html.split('<tr class="focus">')[1].split("</tr>")[0]
    # A GPU entry's runtime is in the GPU column; RAM not measured is '-'.
    assert '<td class="num">-</td><td class="num">120.0</td><td class="num">-</td>' in cells
    assert content.baseline_runtime_ms == 1500.0
