"""`pirm study report`: a user study as one HTML page with its example images beside it —
per-method MOS with 95% intervals and ties, the rating distribution per method, rater
agreement, who was excluded and why, and a few example pairs. Everything comes from the
scorer's StudyReport; every name in it (teams, workers) is escaped."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from pathlib import Path

from pirm.v1 import scorer_pb2

from services.core.wire import TRACKS
from services.report.html import CSS

REPORT_FILE = "report.html"
LEVELS = ("probably worse", "probably better", "definitely better", "excellent")
STUDY_CSS = """
.bar { display: inline-block; height: 12px; background: #3b5bdb; vertical-align: middle; }
.excluded td { color: #a33; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr));
            gap: 10px; }
.examples figure { margin: 0; font-size: 0.85em; text-align: center; }
.examples img { width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
"""


@dataclass(frozen=True)
class Agreement:
    """How a rater's answers follow the others' on the same (method, image) pairs."""

    rater: int
    pairs: int  # pairs they share with at least one other included rater
    correlation: float  # Pearson r of their level and the others' mean; nan if undefined


def rater_agreement(ratings: list[scorer_pb2.StudyRating], included: set[int]
                    ) -> list[Agreement]:
    """Leave-one-out agreement of each included rater with the other included raters."""
    by_pair: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    for r in ratings:
        if r.kind == "pair" and r.rater in included:
            by_pair[(r.method, r.image)][r.rater] = r.level
    result = []
    for rater in sorted(included):
        mine, others = [], []
        for levels in by_pair.values():
            rest = [level for who, level in levels.items() if who != rater]
            if rater in levels and rest:
                mine.append(float(levels[rater]))
                others.append(sum(rest) / len(rest))
        result.append(Agreement(rater, len(mine), _pearson(mine, others)))
    return result


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(statistics.correlation(x, y))


def repeat_agreement(ratings: list[scorer_pb2.StudyRating], included: set[int]) -> tuple[int, int]:
    """(repeats answered with the same level as the first time, repeats) of included raters."""
    first = {(r.rater, r.position): r.level for r in ratings}
    repeats = [(r.level, first.get((r.rater, r.repeat_of))) for r in ratings
               if r.kind == "repeat" and r.rater in included]
    return sum(1 for a, b in repeats if a == b), sum(1 for _, b in repeats if b is not None)


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_study_report(report: scorer_pb2.StudyReport, out_dir: Path) -> list[Path]:
    """report.html and the example PNGs into out_dir; the files, the HTML first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, example in enumerate(report.examples):
        for name, data in ((f"example-{index}-input.png", example.input_png),
                           *((f"example-{index}-method-{m}.png", png)
                             for m, png in enumerate(example.result_png))):
            (out_dir / name).write_bytes(data)
            written.append(out_dir / name)
    html = out_dir / REPORT_FILE
    html.write_text(render_study(report), encoding="utf-8")
    return [html, *written]


def render_study(report: scorer_pb2.StudyReport) -> str:
    study = report.study
    names = {m.method: m.team + (" (baseline)" if m.baseline else "") for m in study.methods}
    included = {r.rater for r in study.raters if not r.excluded and r.done}
    title = f"User study {study.study_id}: track {_track(study)}, phase {study.phase_name}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{CSS}{STUDY_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="note">{escape(study.state.lower())}; {len(study.methods)} methods, '
             f"{len(study.images)} images, {study.ratings_per_pair} ratings per (method, image), "
             f"{len(study.raters)} raters ({len(included)} included). Levels: "
             + ", ".join(f"{i + 1} = {escape(level)}" for i, level in enumerate(LEVELS))
             + ". MOS: per image the mean level of the included raters, then the mean over "
               "images; the interval is a 95% bootstrap over raters and images.</p>"]
    parts += _mos_table(study, names)
    parts += _distribution(study, names)
    parts += _agreement(report, included)
    parts += _exclusions(study)
    parts += _examples(report, names)
    parts.append("</body></html>")
    return "\n".join(parts)


def _track(study: scorer_pb2.Study) -> str:
    track = TRACKS.get(study.track)
    return track.value if track is not None else "?"


def _mos_table(study: scorer_pb2.Study, names: dict[int, str]) -> list[str]:
    rows = sorted(study.methods, key=lambda m: -(m.mos if m.HasField("mos") else -math.inf))
    out = ["<h2>MOS per method</h2>", '<table class="board"><tr><th>method</th><th>MOS</th>'
           "<th>95% interval</th><th>ratings</th><th>images</th><th>tied with</th></tr>"]
    for m in rows:
        ties = ", ".join(escape(names[t]) for t in m.ties) or "–"
        out.append(f"<tr><td>{escape(names[m.method])}</td>"
                   f'<td class="num">{_num(m.mos) if m.HasField("mos") else "–"}</td>'
                   f'<td class="num">[{_num(m.mos_low)}, {_num(m.mos_high)}]</td>'
                   f'<td class="num">{m.ratings}</td><td class="num">{m.images}</td>'
                   f"<td>{ties}</td></tr>")
    out.append("</table><p class=\"note\">Methods whose intervals overlap are tied: the study "
               "cannot tell them apart.</p>")
    return out


def _distribution(study: scorer_pb2.Study, names: dict[int, str]) -> list[str]:
    out = ["<h2>Rating distribution</h2>", '<table class="board"><tr><th>method</th>'
           + "".join(f"<th>{i + 1} {escape(level)}</th>" for i, level in enumerate(LEVELS))
           + "</tr>"]
    for m in study.methods:
        total = sum(m.distribution) or 1
        cells = "".join(
            f'<td class="num"><span class="bar" style="width:{60 * n / total:.0f}px"></span> '
            f"{n}</td>" for n in m.distribution)
        out.append(f"<tr><td>{escape(names[m.method])}</td>{cells}</tr>")
    out.append("</table>")
    return out


def _agreement(report: scorer_pb2.StudyReport, included: set[int]) -> list[str]:
    agreement = rater_agreement(list(report.ratings), included)
    same, repeats = repeat_agreement(list(report.ratings), included)
    defined = [a.correlation for a in agreement if math.isfinite(a.correlation)]
    out = ["<h2>Rater agreement</h2>",
           f'<p>Median correlation of an included rater with the others\' mean on the same '
           f"pairs: {_num(statistics.median(defined), 2) if defined else '–'} "
           f"({len(defined)} raters with enough shared pairs). Repeated tasks answered "
           f"identically: {same} of {repeats}.</p>",
           '<table class="board"><tr><th>rater</th><th>shared pairs</th><th>r</th></tr>']
    out += [f'<tr><td>{a.rater}</td><td class="num">{a.pairs}</td>'
            f'<td class="num">{_num(a.correlation, 2)}</td></tr>' for a in agreement]
    out.append("</table>")
    return out


def _exclusions(study: scorer_pb2.Study) -> list[str]:
    rule = study.rule
    out = ["<h2>Raters and exclusions</h2>",
           f'<p class="note">Rule: at most {rule.max_control_failures} failed control tasks; '
           f"at most {rule.max_inconsistent_repeats} repeated tasks answered more than "
           f"{rule.max_repeat_gap} level apart; a median answer time of at least "
           f"{rule.min_median_seconds:g} s.</p>",
           '<table class="board"><tr><th>rater</th><th>worker</th><th>answered</th>'
           "<th>control failures</th><th>inconsistent repeats</th><th>median s</th>"
           "<th>excluded because</th></tr>"]
    for r in study.raters:
        out.append(f'<tr class="{"excluded" if r.excluded else ""}"><td>{r.rater}</td>'
                   f"<td>{escape(r.worker_id) or '–'}</td>"
                   f'<td class="num">{r.done} / {r.total}</td>'
                   f'<td class="num">{r.control_failures}</td>'
                   f'<td class="num">{r.inconsistent_repeats}</td>'
                   f'<td class="num">{_num(r.median_seconds, 1)}</td>'
                   f"<td>{escape('; '.join(r.reasons)) or '–'}</td></tr>")
    out.append("</table>")
    return out


def _examples(report: scorer_pb2.StudyReport, names: dict[int, str]) -> list[str]:
    out = ["<h2>Example pairs</h2>"]
    for index, example in enumerate(report.examples):
        out.append(f"<h3>{escape(example.image)}</h3><div class=\"examples\">")
        out.append(f'<figure><img src="example-{index}-input.png" alt="input">'
                   "<figcaption>original input</figcaption></figure>")
        for method in range(len(example.result_png)):
            out.append(f'<figure><img src="example-{index}-method-{method}.png" '
                       f'alt="{escape(names[method])}"><figcaption>'
                       f"{escape(names[method])}</figcaption></figure>")
        out.append("</div>")
    return out
