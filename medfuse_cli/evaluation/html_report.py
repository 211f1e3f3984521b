"""The page of a ``--report`` folder, ``index.html``: one self-contained HTML file.

It holds, per pair set, the summary table, the gallery, the plots and a per-image table that
sorts by any column, and at the top how the report was made. CSS and the sort script are
inline, every link is relative and no font or script comes from the web, so the folder opens
offline and can be moved or archived whole. The page is the same for the same results, but
for its date line.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from medfuse_cli.evaluation.gallery import CROP_SIZE, MAGNIFICATION, CropBox, GalleryRow
from medfuse_cli.evaluation.provenance import Provenance
from medfuse_cli.evaluation.report_images import Column, ImageLayout, columns
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.evaluation.tables import arrow, count, format_value, mean_text
from medfuse_cli.metrics import METRICS
from medfuse_cli.pairs import PairSet


@dataclass(frozen=True)
class PairSetSection:
    """What the page shows of one pair set besides its scores: its plots (file names in the
    report folder) and its gallery rows with the region magnified in each."""

    result: PairSetResult
    plots: tuple[str, ...]
    gallery: tuple[tuple[GalleryRow, CropBox], ...]


@dataclass(frozen=True)
class ReportPage:
    """Everything ``render`` puts on the page.

    Attributes:
        sections: One per pair set, in the results' order.
        gallery_metric: The metric the gallery's best, median and worst pairs are chosen by.
        tables: The table files beside the page (``reports.TABLE_FILES``).
        provenance: How the report was made.
        layout: Where each image is, relative to the page.
    """

    sections: tuple[PairSetSection, ...]
    gallery_metric: str
    tables: tuple[str, ...]
    provenance: Provenance
    layout: ImageLayout


def render(page: ReportPage) -> str:
    """The HTML document of ``page`` (UTF-8 text, ``<!doctype html>`` first)."""
    body = [
        "<h1>medfuse evaluation report</h1>",
        _provenance(page.provenance),
        "<p>Tables: " + " · ".join(f'<a href="{_href(n)}">{_text(n)}</a>' for n in page.tables) + "</p>",
        '<nav><ul class="toc">'
        + "".join(
            f'<li><a href="#pairs-{i}">{_text(s.result.pair_set.label)}</a></li>'
            for i, s in enumerate(page.sections)
        )
        + "</ul></nav>",
    ]
    for index, section in enumerate(page.sections):
        body.append(_section(index, section, page))
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>medfuse evaluation report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _provenance(provenance: Provenance) -> str:
    rows = "".join(
        f"<tr><td>{_text(m.label)}</td><td>{_text(m.what)}</td><td><code>{_text(m.sha256 or '—')}</code></td></tr>"
        for m in provenance.methods
    )
    return (
        '<dl class="provenance">'
        f"<dt>command</dt><dd><code>{_text(provenance.command)}</code></dd>"
        f"<dt>versions</dt><dd>{_text(provenance.versions)}</dd>"
        f"<dt>date</dt><dd>{_text(provenance.date)}</dd></dl>"
        '<table class="methods"><thead><tr><th>method</th><th>what</th><th>sha256 of its weights</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _section(index: int, section: PairSetSection, page: ReportPage) -> str:
    result = section.result
    pair_set = result.pair_set
    parts = [
        f'<section id="pairs-{index}">',
        f"<h2>{_text(pair_set.label)} <small>{count(len(pair_set.pairs), 'pair')} · {_text(str(pair_set.folder))}</small></h2>",
        _summary(result),
        *(
            f'<p class="skipped">Skipped {_text(label)}: {_text(reason)}</p>'
            for label, reason in result.skipped.items()
        ),
    ]
    if result.methods:
        parts.append(_gallery(index, section, page))
    if section.plots:
        links = "".join(
            f'<a href="{_href(p)}"><img src="{_href(p)}" alt="{_text(p)}"></a>' for p in section.plots
        )
        parts.append(f'<h3>Plots</h3><div class="plots">{links}</div>')
    if result.methods:
        parts.append(_per_image(index, section, page))
    parts.append("</section>")
    return "\n".join(parts)


def _summary(result: PairSetResult) -> str:
    """Mean ± std per metric (rows, as in the terminal) and method (columns); the best marked;
    the number of pairs behind a mean where some scores were left out."""
    total = len(result.pair_set.pairs)
    head = "".join(f"<th>{_text(label)}</th>" for label in result.methods)
    rows = []
    for metric in result.metrics:
        best = result.best(metric)
        cells = []
        for label, scores in result.methods.items():
            n = len(scores.values(metric))
            text = mean_text(scores, metric) if n > 1 else format_value(scores.mean(metric))
            count_n = f"n = {n} of {total}" if n < total else "n = 1" if n == 1 else ""
            note = f'<span class="n">{count_n}</span>' if count_n else ""
            mark = ' <span class="star">★</span>' if best == label else ""
            cells.append(f"<td{' class=best' if best == label else ''}>{text}{mark}{note}</td>")
        rows.append(f"<tr>{_metric_header(metric)}{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="summary"><thead><tr><th>metric</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div><p class=note>Mean ± std over the {count(total, 'pair')} · "
        "↑ higher is better, ↓ lower is better (shaded) · ★ best mean · n = k of N: only k pairs had a "
        "finite score (NaN or inf left out); one score has no ± std.</p>"
    )


def _gallery(index: int, section: PairSetSection, page: ReportPage) -> str:
    result = section.result
    metric = page.gallery_metric
    shown = columns(result.pair_set, result.methods)
    sides = {box.size for _, box in section.gallery}
    rows = []
    for row, box in section.gallery:
        figures = "".join(_figure(section, page.layout, row.image, column, box) for column in shown)
        region = f" · region {box.size}×{box.size}" if len(sides) > 1 else ""
        rows.append(
            f'<div class="pair" id="{_anchor(index, result.pair_set, row.image)}">'
            f"<h4>{_text(row.image)} <small>{', '.join(row.reasons)} · mean {_text(metric)} "
            f"{format_value(row.score)}{region}</small></h4>"
            f'<div class="row" style="--columns: {len(shown)}">{figures}</div></div>'
        )
    if not any("best" in row.reasons for row, _ in section.gallery):
        intro = f"No pair has a finite {_text(metric)}: "
        if not rows:
            return (
                f"<h3>Gallery</h3><p class=note>{intro}no gallery. --gallery-metric chooses another "
                "metric to rank pairs by; --gallery-pairs names pairs to show anyway.</p>"
            )
        intro += "no best, median or worst pair; the pairs named with --gallery-pairs."
    else:
        intro = (
            f"Best, median and worst pair by {_text(metric)} {arrow(metric)} (each pair's mean over "
            "the methods), and pairs named with --gallery-pairs."
        )
    side = next(iter(sides)) if len(sides) == 1 else None
    region = f"the {side}×{side} region" if side else "the square region (its size by each row)"
    return (
        f"<h3>Gallery</h3><p class=note>{intro} The yellow square marks {region} with the most edge "
        f"energy in the MRI (up to {CROP_SIZE}×{CROP_SIZE}), shown ×{MAGNIFICATION} below every image "
        "of the row. Bold: the best score in the row.</p>" + "".join(rows)
    )


def _figure(section: PairSetSection, layout: ImageLayout, image: str, column: Column, box: CropBox) -> str:
    pair_set = section.result.pair_set
    full, crop = layout.path(pair_set, image, column), layout.path(pair_set, image, column, crop=True)
    height, width = box.shape
    square = (
        f"left:{100 * box.left / width:.3f}%;top:{100 * box.top / height:.3f}%;"
        f"width:{100 * box.size / width:.3f}%;height:{100 * box.size / height:.3f}%"
    )
    side = box.size * MAGNIFICATION
    caption = f"<b>{_text(column.title)}</b>"
    if column.method:
        caption += _scores(section.result, column.title, image)
    return (
        f'<figure><a class="frame" href="{_href(full)}"><img src="{_href(full)}" width="{width}" '
        f'height="{height}" alt="{_text(column.title)} {_text(image)}"><span class="box" style="{square}"></span></a>'
        f'<img class="crop" src="{_href(crop)}" width="{side}" height="{side}" alt="{_text(column.title)}, magnified">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _scores(result: PairSetResult, label: str, image: str) -> str:
    """One method's scores of one pair, each bold where it is the best of the row."""
    spans = []
    for metric in result.metrics:
        value = result.methods[label].per_image[image][metric]
        row = [s.per_image[image][metric] for s in result.methods.values()]
        finite = [v for v in row if math.isfinite(v)]
        pick = max if METRICS[metric].higher_is_better else min
        best = pick(finite) if finite else math.nan
        text = f"{_text(metric)} {format_value(value)}"
        spans.append(f"<span>{f'<b>{text}</b>' if len(finite) > 1 and value == best else text}</span>")
    return f'<span class="scores">{"".join(spans)}</span>'


def _per_image(index: int, section: PairSetSection, page: ReportPage) -> str:
    result = section.result
    pair_set = result.pair_set
    mri, second = columns(pair_set, ())
    gallery = {row.image for row, _ in section.gallery}
    head = (
        "<th>image</th><th>method</th>"
        + "".join(_metric_header(m) for m in result.metrics)
        + "<th>images</th>"
    )
    rows = []
    for label, scores in result.methods.items():
        for image, values in scores.per_image.items():
            fused = page.layout.path(pair_set, image, Column(label, method=True))
            name = _text(image)
            if image in gallery:
                name = f'<a href="#{_anchor(index, pair_set, image)}">{name}</a>'
            cells = "".join(
                f'<td data-v="{_number(values[m])}">{format_value(values[m])}</td>' for m in result.metrics
            )
            links = (
                f'<a href="{_href(fused)}"><img class="mini" src="{_href(fused)}" loading="lazy" alt="fused"></a> '
                f'<a href="{_href(page.layout.path(pair_set, image, mri))}">{mri.title}</a> '
                f'<a href="{_href(page.layout.path(pair_set, image, second))}">{second.title}</a>'
            )
            rows.append(f"<tr><td>{name}</td><td>{_text(label)}</td>{cells}<td>{links}</td></tr>")
    return (
        "<h3>Every image</h3><p class=note>Click a column's title to sort by it (again to reverse). "
        "An image's name links to its gallery row where it has one.</p>"
        f'<div class="scroll"><table class="sortable per-image"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _anchor(index: int, pair_set: PairSet, image: str) -> str:
    """The id of a gallery row: the pair set's and the pair's positions."""
    return f"pairs-{index}-{[pair.mri.name for pair in pair_set.pairs].index(image)}"


def _metric_header(metric: str) -> str:
    lower = not METRICS[metric].higher_is_better
    title = "lower is better" if lower else "higher is better"
    return f'<th{" class=lower" if lower else ""} title="{title}">{_text(metric)} {arrow(metric)}</th>'


def _number(value: float) -> str:
    """A value as JavaScript's ``parseFloat`` reads it (``Infinity``, ``NaN`` included)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _text(text: str) -> str:
    """Text for the page: HTML-escaped, with bytes of a file name that is not UTF-8 shown as �."""
    return html.escape(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _href(path: str) -> str:
    """A relative link to a file in the report folder, percent-encoded (its bytes as they are)."""
    return html.escape(quote(path, safe="/", errors="surrogateescape"))


def _lines(lines: Iterable[str]) -> str:
    return "\n".join(line.strip() for line in lines)


_CSS = _lines(
    """
    :root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --best: #dafbe1; }
    body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
    color: #1f2328; background: #fff; max-width: 1600px; margin: 0 auto; padding: 8px 20px 48px; }
    h1 { font-size: 24px; margin: 12px 0 8px; }
    h2 { font-size: 20px; margin-top: 40px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
    h2 small, h4 small { color: var(--muted); font-weight: normal; font-size: 13px; }
    h3 { font-size: 16px; margin: 28px 0 6px; }
    h4 { font-size: 14px; margin: 18px 0 6px; }
    code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
    .note, .skipped { color: var(--muted); font-size: 12px; }
    .provenance { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 8px; }
    .provenance dt { color: var(--muted); }
    .provenance dd { margin: 0; }
    .toc { display: flex; gap: 16px; padding: 0; list-style: none; }
    table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0; }
    th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
    th:first-child, td:first-child, .methods td, .methods th { text-align: left; }
    .methods td { white-space: normal; }
    thead th { background: #f6f8fa; }
    th.lower { background: #fff8c5; }
    td.best { background: var(--best); font-weight: 600; }
    .star { color: #1a7f37; }
    .n { display: block; color: #9a6700; font-size: 11px; font-weight: normal; }
    .plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
    .plots a { flex: 1 1 0; min-width: 320px; max-width: 760px; }
    .plots img { width: 100%; height: auto; border: 1px solid var(--line); }
    .row { display: grid; grid-template-columns: repeat(var(--columns), minmax(150px, 300px)); gap: 10px;
    overflow-x: auto; }
    figure { margin: 0; min-width: 0; }
    figure img { display: block; width: 100%; height: auto; background: #000; image-rendering: pixelated; }
    .frame { position: relative; display: block; }
    .box { position: absolute; outline: 2px solid #ffd33d; pointer-events: none; }
    .crop { margin-top: 6px; }
    figcaption { font-size: 12px; margin-top: 4px; }
    .scores { display: flex; flex-wrap: wrap; gap: 0 8px; color: var(--muted); font-variant-numeric: tabular-nums; }
    .scores b { color: #1a7f37; }
    .scroll { overflow-x: auto; }
    .sortable th { cursor: pointer; user-select: none; }
    .sortable th[aria-sort="ascending"]::after { content: " ▲"; }
    .sortable th[aria-sort="descending"]::after { content: " ▼"; }
    img.mini { width: 40px; height: 40px; vertical-align: middle; image-rendering: auto; background: #000; }
    """.splitlines()
)

# Sorts a table by the column whose title is clicked: numbers by their data-v value (NaN last),
# other cells by their text; a second click reverses.
_SCRIPT = _lines(
    """
    for (const table of document.querySelectorAll("table.sortable")) {
    const body = table.tBodies[0];
    for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", () => {
    const col = th.cellIndex, up = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentNode.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    const key = (row) => { const c = row.cells[col];
    return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent; };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x === "number") { if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y); return up ? x - y : y - x; }
    return up ? x.localeCompare(y, undefined, {numeric: true}) : y.localeCompare(x, undefined, {numeric: true}); });
    body.append(...rows);
    });
    }
    }
    """.splitlines()
)
