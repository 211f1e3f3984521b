"""``medfuse evaluate --report``: the HTML report's structure, its gallery, its files, and how it
renders in a real browser (Chromium, when the machine has it).

The report is built once per module from the bundled examples (six pairs, three kinds) with
LWNet and two classical rules, in a subprocess as a user would run it; no network, no ../shared.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli.evaluation.gallery import CropBox, check_named_pairs, crop_box, magnify, pick_rows
from medfuse_cli.evaluation.scoring import MethodScores, PairSetResult
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.pairs import PairFiles, PairSet, find_pair_sets

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
METHODS = ("lwnet", "average", "laplacian")
METRICS = "SSIM,PSNR,Qcv"  # fast, and one of them lower-is-better
KINDS = {"CT-MRI": "CT", "PET-MRI": "PET", "SPECT-MRI": "SPECT"}


def _args(folder: Path, *extra: str) -> list[str]:
    """``medfuse evaluate``'s arguments for a report of the bundled examples into ``folder``."""
    args = ["evaluate", str(EXAMPLES), "--metrics", METRICS]
    for method in METHODS:
        args += ["-m", method]
    return [*args, "--report", str(folder), *extra]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built in a subprocess, as a user runs it (the other builds run in-process, faster)."""
    folder = tmp_path_factory.mktemp("report") / "report"
    done = subprocess.run(
        [sys.executable, "-m", "medfuse_cli", *_args(folder, "--gallery-pairs", "2004", "-q")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return folder


class _Page(HTMLParser):
    """Every link, image source, id and table of a page, and its external resources."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        for name in ("href", "src"):
            if attributes.get(name) is not None:
                self.links.append(str(attributes[name]))
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_every_link_is_relative_and_every_linked_file_exists(report: Path) -> None:
    page = _parse(report / "index.html")
    assert page.links
    for link in page.links:
        assert "://" not in link and not link.startswith(("/", "//")), link  # no web, no absolute paths
        if link.startswith("#"):
            assert link[1:] in page.ids, link
        else:
            assert (report / link).is_file(), link
    # self-contained: no external stylesheet, script or font
    assert not [t for t, a in page.tags if t == "link" or (t == "script" and "src" in a)]
    assert (
        "@import" not in (report / "index.html").read_text()
        and "url(" not in (report / "index.html").read_text()
    )


def test_the_report_shows_every_method_and_every_pair(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    page = _parse(report / "index.html")
    sources = {link for link in page.links if link.startswith("images/")}
    pair_sets, _ = find_pair_sets(EXAMPLES, "test")
    assert len(pair_sets) == 3
    for pair_set in pair_sets:
        modality = KINDS[pair_set.kind]
        for pair in pair_set.pairs:
            expected = {
                f"images/{pair_set.label}/MRI/{pair.name}.png",
                f"images/{pair_set.label}/{modality}/{pair.name}.png",
            }
            expected |= {f"images/{pair_set.label}/fused/{m}/{pair.name}.png" for m in METHODS}
            assert expected <= sources, (pair_set.label, pair.name)
            assert html.count(f">{pair.mri.name}<") >= len(METHODS)  # a per-image row per method
    # every image written is one the page links (no orphans), and each has the pair's size
    written = {p.relative_to(report).as_posix() for p in (report / "images").rglob("*.png")}
    assert written == sources
    assert len(written) == 6 * (2 + len(METHODS))
    for link in sources:
        assert Image.open(report / link).size == (256, 256)
    # the summary table: a column per method; the lower-is-better metric marked
    for method in METHODS:
        assert f"<th>{method}</th>" in html
    assert 'class=lower title="lower is better">Qcv ↓' in html
    assert html.count("<td class=best>") == 3 * 3  # a best mean per kind and metric


def test_the_per_image_table_holds_the_scores_of_the_json(report: Path) -> None:
    doc = json.loads((report / "summary.json").read_text())
    html = (report / "index.html").read_text(encoding="utf-8")
    for kind, result in doc["pairs"].items():
        for method, scores in result["methods"].items():
            for image, values in scores["per_image"].items():
                for metric, value in values.items():
                    shown = ("NaN", "Infinity") if value is None else (repr(value),)
                    assert any(f'data-v="{v}"' in html for v in shown), (kind, method, image, metric)
    assert {p.name for p in report.glob("*.png")} == {
        f"{k}_{f}.png" for k in KINDS for f in ("boxplots", "radar")
    }
    for name in ("per_image.csv", "summary.csv", "summary.md", "summary.json"):
        assert (report / name).is_file()


def test_the_gallery_shows_best_median_worst_and_named_pairs_with_crops(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    assert html.count('<div class="pair"') == 6  # two pairs per kind: both shown
    assert "best, median" in html and "worst" in html and "named" in html  # 2004 is named
    crops = sorted((report / "crops").rglob("*.png"))
    assert len(crops) == 6 * (2 + len(METHODS))
    for crop in crops:
        assert Image.open(crop).size == (192, 192)  # 64 x 64, x3
    # the same region of every image of a row: the MRI's crop is its own pixels, x3
    mri = np.asarray(Image.open(report / "images/CT-MRI/MRI/2004.png"))
    crop = np.asarray(Image.open(report / "crops/CT-MRI/MRI/2004.png"))
    box = crop_box(mri.astype(np.float32) / 255)
    assert np.array_equal(crop, magnify(mri, box))


def test_the_report_says_how_it_was_made(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "medfuse evaluate" in html and "--report" in html and "--gallery-pairs 2004" in html
    assert re.search(r"medfuse \d+\.\d+\.\d+", html)
    assert re.search(r"<dt>date</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", html)
    lwnet = get_fuser_spec("lwnet")
    for checkpoint in ("lwnet.functional", "lwnet.ct"):  # the SPECT/PET pairs and the CT pairs
        assert f"checkpoint {checkpoint}" in html and lwnet.checkpoint(checkpoint).sha256 in html
    assert "classical rule, no weights" in html


def test_a_report_is_the_same_but_for_its_date(run_cli, report: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    done = run_cli(*_args(again, "--gallery-pairs", "2004", "-q"))
    assert done.code == 0, done.stderr

    def page(folder: Path) -> str:
        text = (folder / "index.html").read_text(encoding="utf-8").replace(str(folder), "FOLDER")
        return re.sub(r"<dt>date</dt><dd>[^<]*</dd>", "", text)

    assert page(again) == page(report)
    for path in sorted(report.rglob("*.png")):
        assert (again / path.relative_to(report)).read_bytes() == path.read_bytes(), path


def test_an_existing_report_is_kept_without_overwrite(run_cli, report: Path, tmp_path: Path) -> None:
    folder = tmp_path / "report"
    shutil.copytree(report, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    refused = run_cli(*_args(folder, "-q"))
    assert refused.code == 1
    assert refused.stderr.startswith("error: --report: ") and "pass --overwrite" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    replaced = run_cli(*_args(folder, "-q", "--overwrite"))
    assert replaced.code == 0, replaced.stderr
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "--gallery-pairs 2004" not in html and "named · mean" not in html


def test_a_failed_report_leaves_nothing(run_cli, tmp_path: Path) -> None:
    """The second method's images are the wrong size: the report folder the run made, with the
    sources and first method's images written meanwhile, is gone again."""
    wrong = tmp_path / "wrong"
    for name in ("10018", "25014"):
        wrong.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(wrong / f"{name}.png")
    folder = tmp_path / "deep" / "report"
    result = run_cli(
        "evaluate", EXAMPLES / "SPECT-MRI", "-m", "average", "--fused", f"w={wrong}", "--report", folder, "-q"
    )
    assert result.code == 1 and "is 32x32" in result.stderr
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--gallery-pairs", "2004"),
            "error: --gallery-pairs and --gallery-metric choose what --report shows",
        ),
        (("--report", "{tmp}/r", "--gallery-pairs", "nope"), "error: --gallery-pairs: no pair named nope in"),
        (("--report", "{tmp}/r", "--gallery-metric", "MI"), "error: --gallery-metric MI is not scored"),
        (("--report", "{tmp}/r", "--gallery-metric", "nope"), "error: unknown metric 'nope'"),
        (("--report", "{tmp}/r", "--plot"), "error: --plot draws its figures beside --out's tables"),
        (("--report", "{tmp}/r", "--out", "{tmp}/r"), "error: --out and --report name one folder"),
        (("--report", "{tmp}/file.txt"), "error: --report must be a folder"),
        (("--overwrite",), "error: --overwrite replaces files that --out or --report write"),
    ],
)
def test_report_options_that_cannot_work_are_one_line(
    run_cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    base = ("evaluate", EXAMPLES / "CT-MRI", "-m", "average", "--metrics", METRICS)
    result = run_cli(*base, *(a.format(tmp=tmp_path) for a in args))
    assert result.code == 1
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


# --- the gallery's choices ----------------------------------------------------------------


def _result(scores: dict[str, dict[str, float]], metric: str = "SSIM") -> PairSetResult:
    """One method per key of each image's scores: {image: {method: value}}."""
    pairs = tuple(PairFiles(Path(i).stem, Path("MRI") / i, Path("CT") / i) for i in scores)
    methods: dict[str, MethodScores] = {}
    for image, by_method in scores.items():
        for method, value in by_method.items():
            methods.setdefault(method, MethodScores()).per_image[image] = {metric: value}
    return PairSetResult(PairSet("CT-MRI", "CT-MRI", Path("set"), pairs), [metric], methods)


def test_best_median_and_worst_follow_the_metric_direction() -> None:
    values = {"a.png": 0.9, "b.png": 0.1, "c.png": 0.5, "d.png": 0.3, "e.png": 0.7}
    ssim = _result({i: {"x": v, "y": v} for i, v in values.items()}, "SSIM")
    rows = pick_rows(ssim, "SSIM", set())
    assert [(r.image, r.reasons) for r in rows] == [
        ("a.png", ("best",)),
        ("c.png", ("median",)),
        ("b.png", ("worst",)),
    ]
    qcv = _result({i: {"x": v} for i, v in values.items()}, "Qcv")  # lower is better
    assert [r.image for r in pick_rows(qcv, "Qcv", set())] == ["b.png", "c.png", "a.png"]


def test_pairs_are_scored_by_their_mean_over_methods_and_nan_is_not_ranked() -> None:
    result = _result(
        {
            "a.png": {"x": 0.9, "y": 0.1},  # mean 0.5
            "b.png": {"x": 0.6, "y": math.nan},  # 0.6: the finite one
            "c.png": {"x": math.nan, "y": math.nan},  # not ranked
        }
    )
    rows = pick_rows(result, "SSIM", {"c"})
    assert [(r.image, r.reasons) for r in rows] == [
        ("b.png", ("best", "median")),
        ("a.png", ("worst",)),
        ("c.png", ("named",)),
    ]
    assert rows[0].score == pytest.approx(0.6) and math.isnan(rows[2].score)


def test_ties_are_broken_by_name_and_named_pairs_match_stem_or_file_name() -> None:
    result = _result({"b.png": {"x": 0.5}, "a.png": {"x": 0.5}, "c.png": {"x": 0.5}})
    assert [r.image for r in pick_rows(result, "SSIM", set())] == ["a.png", "b.png", "c.png"]
    assert pick_rows(result, "SSIM", {"b.png"})[1].reasons == ("median", "named")
    assert check_named_pairs([result.pair_set], [" a", "b.png", ""]) == {"a", "b.png"}
    assert pick_rows(_result({}), "SSIM", set()) == []


def test_the_crop_is_where_the_edges_are_and_magnified_by_repetition() -> None:
    image = np.zeros((100, 120), np.float32)
    image[50:90, 70:110] = np.indices((40, 40)).sum(axis=0) % 2  # a checkerboard: every pixel an edge
    box = crop_box(image, size=32)
    assert box == CropBox(box.top, box.left, 32, (100, 120))
    assert 50 <= box.top <= 58 and 70 <= box.left <= 78  # inside the textured square
    assert crop_box(image, size=32) == box  # the same every time
    small = crop_box(np.zeros((20, 30), np.float32))
    assert small == CropBox(0, 0, 20, (20, 30))  # a smaller image: its smaller side, top-left
    rgb = np.arange(100 * 120 * 3).reshape(100, 120, 3)
    big = magnify(rgb, box, 3)
    assert big.shape == (96, 96, 3)
    assert np.array_equal(big[::3, ::3], rgb[box.top : box.top + 32, box.left : box.left + 32])
    assert np.array_equal(big[1::3, 2::3], big[::3, ::3])


# --- in a real browser --------------------------------------------------------------------


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium without a sandbox, GPU or network: no host name resolves, so a page that needed
    the web would show it."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def browser() -> str:
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (Debian) to run this test")
    return found


def test_the_report_renders_in_a_headless_browser_offline(browser: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    args = ("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000")
    done = _headless(browser, tmp_path / "profile", *args, (report / "index.html").as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 1000, len(colours)  # text, tables and images, not a blank page
    dark = (pixels.max(axis=-1) < 40).mean()  # the scans' black backgrounds: the images were drawn
    assert dark > 0.05, dark


def test_the_per_image_table_sorts_in_a_browser(browser: str, report: Path, tmp_path: Path) -> None:
    """Click the first metric's title twice and read the column's order back from the DOM."""
    folder = tmp_path / "report"
    shutil.copytree(report, folder)
    probe = (
        '<script>const table = document.querySelector("table.sortable");'
        "const th = table.tHead.rows[0].cells[2];"
        "const order = () => [...table.tBodies[0].rows].map(r => r.cells[2].dataset.v).join(' ');"
        'th.click(); document.body.setAttribute("data-up", order());'
        'th.click(); document.body.setAttribute("data-down", order());</script></body>'
    )
    page = folder / "probe.html"
    page.write_text((folder / "index.html").read_text(encoding="utf-8").replace("</body>", probe), "utf-8")
    done = _headless(browser, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    up, down = (
        [float(v) for v in re.search(f'data-{d}="([^"]*)"', done.stdout)[1].split()] for d in ("up", "down")
    )
    assert len(up) == len(METHODS) * 2  # the first kind's rows: methods x pairs
    assert up == sorted(up) and down == sorted(up, reverse=True) and up != down
