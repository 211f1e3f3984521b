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


def test_an_empty_image_folder_is_not_called_an_existing_file(run_cli, tmp_path: Path) -> None:
    folder = tmp_path / "report"
    (folder / "images").mkdir(parents=True)
    refused = run_cli(*_args(folder, "-q"))
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert (
        refused.stderr
        == f"error: --report: {folder} already holds a report's images/; pass --overwrite to replace that report\n"
    )


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
        (
            ("--report", "{tmp}/r", "--gallery-pairs", ""),
            "error: empty argument (word 10 after medfuse, after '--gallery-pairs')",
        ),
        (("--report", "{tmp}/r", "--gallery-pairs", ","), "error: --gallery-pairs: an empty name"),
        (("--report", "{tmp}/r", "--gallery-pairs", "2004,"), "error: --gallery-pairs: an empty name"),
        (("--report", "{tmp}/r", "--out", "{tmp}/r/tables"), "error: --out lies inside the --report folder"),
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
    assert check_named_pairs([result.pair_set], [" a", "b.png "]) == {"a", "b.png"}
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


# --- where a report goes, and what --overwrite replaces ------------------------------------


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, hidden ones included."""
    return {
        p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def _ct_args(folder: Path, *extra: object) -> tuple[object, ...]:
    """A quick report of the CT-MRI examples (two pairs) with one classical rule."""
    return (
        "evaluate",
        EXAMPLES / "CT-MRI",
        "-m",
        "average",
        "--metrics",
        METRICS,
        "--report",
        folder,
        "-q",
        *extra,
    )


def _linked(folder: Path) -> set[str]:
    return {link for link in _parse(folder / "index.html").links if not link.startswith("#")}


@pytest.mark.parametrize(
    ("option", "where", "relation"),
    [
        ("--report", "data", "is the pair folder"),
        ("--report", "data/MRI", "lies inside the pair folder"),
        ("--report", "data/MRI/new", "lies inside the pair folder"),
        ("--report", ".", "holds the pair folder"),
        ("--report", "alias/report", "lies inside the pair folder"),  # alias -> data
        ("--out", "data", "is the pair folder"),
        ("--out", "alias/CT", "lies inside the pair folder"),
        ("--report", "fused", "is --fused other="),
        ("--report", "fused/report", "lies inside --fused other="),
        ("--out", "fused/out", "lies inside --fused other="),
    ],
)
def test_an_output_in_the_inputs_is_refused_before_scoring(
    run_cli, tmp_path: Path, option: str, where: str, relation: str
) -> None:
    """A report written into the data became part of it: the next run scored its images as
    pairs, or found folders that no longer pair up. Refused, links resolved, data untouched."""
    data, fused = tmp_path / "data", tmp_path / "fused"
    shutil.copytree(EXAMPLES / "CT-MRI", data)
    shutil.copytree(EXAMPLES / "CT-MRI" / "MRI", fused)  # "fused" images of the right names
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    before = _tree(tmp_path)
    target = tmp_path / where
    result = run_cli(
        "evaluate", data, "-m", "average", "--fused", f"other={fused}", "--metrics", "SSIM", option, target
    )
    assert result.code == 1
    assert result.stderr.startswith(f"error: {option} {target} {relation}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert _tree(tmp_path) == before


def test_a_failed_overwrite_leaves_the_old_report_as_it_was(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_full_on
) -> None:
    """The new report is made in a work folder and moved in only when whole: a run that fails
    while scoring, while writing (a full disk) or while moving the report in leaves the old
    one byte for byte, with every link working."""
    folder = tmp_path / "report"
    assert run_cli(*_ct_args(folder, "-m", "laplacian")).code == 0
    before = _tree(folder)
    wrong = tmp_path / "wrong"  # the second method's images are the wrong size: fails while scoring
    for name in ("2004", "16011"):
        wrong.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(wrong / f"{name}.png")
    failed = run_cli(*_ct_args(folder, "--fused", f"w={wrong}", "--overwrite"))
    assert failed.code == 1 and "is 32x32" in failed.stderr
    assert _tree(folder) == before

    disk_full_on("index.html")
    failed = run_cli(*_ct_args(folder, "--overwrite"))
    assert failed.code == 1 and "No space left on device" in failed.stderr
    assert _tree(folder) == before
    monkeypatch.undo()

    rename = os.rename

    def stuck(source, target):  # the new page cannot be moved in: every move is undone
        if Path(source).name == "index.html" and Path(source).parent.name.startswith(".medfuse-report-new"):
            raise PermissionError(13, "Permission denied", str(source))
        return rename(source, target)

    monkeypatch.setattr(os, "rename", stuck)
    failed = run_cli(*_ct_args(folder, "--overwrite"))
    assert failed.code == 1 and failed.stderr.startswith(f"error: cannot replace the report in {folder}")
    assert _tree(folder) == before
    monkeypatch.undo()
    for link in _linked(folder):
        assert (folder / link).is_file(), link

    # the tester's case: a plot replaced by a folder is an old report's entry, replaced whole
    (folder / "CT-MRI_radar.png").unlink()
    (folder / "CT-MRI_radar.png").mkdir()
    assert run_cli(*_ct_args(folder, "--overwrite")).code == 0
    assert (folder / "CT-MRI_radar.png").is_file()


def test_overwrite_replaces_the_whole_report_and_keeps_other_files(run_cli, tmp_path: Path) -> None:
    """No image, crop or plot of the old report stays that the new one does not link; files a
    report does not write stay; a killed run's work folder is cleared."""
    folder = tmp_path / "report"
    assert run_cli(*_ct_args(folder, "-m", "maximum", "--gallery-pairs", "2004")).code == 0
    assert (folder / "images" / "CT-MRI" / "fused" / "maximum").is_dir()
    (folder / "notes.txt").write_text("mine")
    stale = folder / ".medfuse-report-new.999999999.0123abcd.tmp"  # no process has that id
    (stale / "images").mkdir(parents=True)
    assert run_cli(*_ct_args(folder, "--overwrite", "--metrics", "SSIM")).code == 0
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == _linked(folder) | {"index.html", "notes.txt"}  # every file linked: no orphan
    assert not (folder / "images" / "CT-MRI" / "fused" / "maximum").exists()
    assert not (folder / "CT-MRI_radar.png").exists()  # one metric: no radar
    assert (folder / "notes.txt").read_text() == "mine"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_symlink_in_the_report_folder_is_never_written_through(run_cli, tmp_path: Path) -> None:
    """rep/images pointing at a data set: --overwrite replaces the link, the data stays."""
    data = tmp_path / "ex2"
    shutil.copytree(EXAMPLES / "CT-MRI", data)
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "images").symlink_to(data, target_is_directory=True)
    before = _tree(data)
    refused = run_cli(*_ct_args(folder))
    assert refused.code == 1 and "images" in refused.stderr and "--overwrite" in refused.stderr
    assert run_cli(*_ct_args(folder, "--overwrite")).code == 0
    assert _tree(data) == before
    assert not (folder / "images").is_symlink() and (folder / "images" / "CT-MRI").is_dir()


def _gray_set(root: Path, sizes: dict[str, int], same: bool = False) -> Path:
    """A CT-MRI pair folder of random gray pairs, one per name, square of the given size; with
    ``same`` the CT is the MRI (a perfect copy fuses to a PSNR of inf)."""
    rng = np.random.default_rng(7)
    for name, size in sizes.items():
        mri = rng.integers(0, 256, (size, size)).astype(np.uint8)
        for modality, pixels in (("MRI", mri), ("CT", mri if same else 255 - mri // 2)):
            (root / modality).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / modality / f"{name}.png")
    return root


def test_every_file_has_its_own_name_when_labels_reduce_alike(run_cli, tmp_path: Path) -> None:
    """``A_B/CT-MRI`` and ``A/B_CT-MRI`` both reduce to ``A_B_CT-MRI``: their plots (in the
    report and in --out) and image folders still differ, named by one rule."""
    data = tmp_path / "data"
    _gray_set(data / "A_B" / "CT-MRI", {"a": 48})
    _gray_set(data / "A" / "B_CT-MRI", {"b": 48})
    folder, out = tmp_path / "report", tmp_path / "out"
    result = run_cli(
        "evaluate",
        data,
        "-m",
        "average",
        "--metrics",
        METRICS,
        "--report",
        folder,
        "--out",
        out,
        "--plot",
        "-q",
    )
    assert result.code == 0, result.stderr
    plots = {"A_B_CT-MRI", "A_B_CT-MRI-2"}
    expected = {f"{stem}_{kind}.png" for stem in plots for kind in ("boxplots", "radar")}
    assert {p.name for p in folder.glob("*.png")} == expected == {p.name for p in out.glob("*.png")}
    assert {p.name for p in (folder / "images").iterdir()} == plots
    html = (folder / "index.html").read_text(encoding="utf-8")
    first, second = html.split('<section id="pairs-1">')
    assert "A_B_CT-MRI_boxplots.png" in first and "A_B_CT-MRI-2_boxplots.png" in second
    for link in _linked(folder):
        assert (folder / link).is_file(), link


def test_a_gallery_without_a_finite_score_says_why(run_cli, tmp_path: Path) -> None:
    data = _gray_set(tmp_path / "set", {"a": 48, "b": 48}, same=True)
    folder = tmp_path / "report"
    args = ("evaluate", data, "-m", "average", "--metrics", "PSNR,SSIM", "--report", folder, "-q")
    assert run_cli(*args).code == 0
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "<h3>Gallery</h3><p class=note>No pair has a finite PSNR: no gallery." in html
    assert "n = 0 of 2" in html
    assert run_cli(*args, "--overwrite", "--gallery-pairs", "a").code == 0  # a named pair: shown
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "No pair has a finite PSNR: no best, median or worst pair" in html
    assert html.count('<div class="pair"') == 1


def test_one_pair_reads_as_one_pair_and_shows_no_spread(run_cli, tmp_path: Path) -> None:
    data = _gray_set(tmp_path / "set", {"a": 48})
    folder = tmp_path / "report"
    result = run_cli(
        "evaluate", data, "-m", "average", "-m", "maximum", "--metrics", METRICS, "--report", folder
    )
    assert result.code == 0, result.stderr
    html = (folder / "index.html").read_text(encoding="utf-8")
    markdown = (folder / "summary.md").read_text(encoding="utf-8")
    assert "CT-MRI (1 pair)" in result.stdout and "<small>1 pair ·" in html and "(1 pair," in markdown
    for text in (result.stdout, html, markdown):
        assert "1 pairs" not in text and "± 0.0000" not in text
    assert '<span class="n">n = 1</span>' in html and "(n = 1)" in markdown and "(n = 1)" in result.stdout


def test_the_gallery_says_the_size_of_each_region(run_cli, tmp_path: Path) -> None:
    """The region is 64×64 but in an image smaller than that: the page says its real size."""
    folder = tmp_path / "report"
    small = _gray_set(tmp_path / "small", {"a": 48, "b": 48})
    assert (
        run_cli("evaluate", small, "-m", "average", "--metrics", "SSIM", "--report", folder, "-q").code == 0
    )
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "marks the 48×48 region" in html and "64×64 region" not in html
    mixed = _gray_set(tmp_path / "mixed", {"a": 48, "b": 96})
    args = ("evaluate", mixed, "-m", "average", "--metrics", "SSIM", "--report", folder, "--overwrite", "-q")
    assert run_cli(*args).code == 0
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "region 48×48</small>" in html and "region 64×64</small>" in html
    assert "marks the 48×48" not in html and "marks the 64×64" not in html


def test_the_box_plots_title_clears_the_subplots_titles() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from medfuse_cli.evaluation import plots
    from medfuse_cli.metrics import METRICS as REGISTRY

    names = list(REGISTRY)  # --metrics all: seven rows of three
    rng = np.random.default_rng(0)
    scores = MethodScores({f"{i}.png": {m: float(rng.random()) for m in names} for i in range(3)})
    pairs = tuple(PairFiles(str(i), Path(f"MRI/{i}.png"), Path(f"CT/{i}.png")) for i in range(3))
    result = PairSetResult(PairSet("CT-MRI", "CT-MRI", Path("set"), pairs), names, {"x": scores, "y": scores})
    fig, _ = plots._boxplots(result)
    FigureCanvasAgg(fig).draw()  # lays the figure out as savefig does
    (suptitle,) = fig.texts
    title = suptitle.get_window_extent()
    for ax in fig.axes:
        if ax.get_visible():
            assert not title.overlaps(ax.title.get_window_extent()), ax.get_title()
