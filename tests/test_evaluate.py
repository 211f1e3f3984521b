"""``medfuse evaluate``: pair discovery, methods, the JSON contract, reports, plots and errors.

Everything runs on the bundled examples or on small synthetic pairs; no network, no ../shared.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse_cli import weights
from medfuse_cli.color import split_luma
from medfuse_cli.evaluation.methods import parse_metrics, parse_model
from medfuse_cli.evaluation.plots import area_ratio, normalised_means
from medfuse_cli.evaluation.scoring import MethodScores, PairSetResult, luma8
from medfuse_cli.fusers import get_fuser_spec
from medfuse_cli.io import read_image
from medfuse_cli.pairs import PairSet

FAST = "SSIM,PSNR,Qcv"  # a small metric set, one of them lower-is-better


def _write_gray(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _synthetic_set(
    root: Path, modality: str = "CT", names: tuple[str, ...] = ("a", "b"), size: int = 48
) -> Path:
    """A pair folder of small gray pairs with texture, so every metric is defined."""
    rng = np.random.default_rng(len(names) + size)
    for name in names:
        mri = rng.integers(0, 256, (size, size))
        _write_gray(root / "MRI" / f"{name}.png", mri)
        _write_gray(root / modality / f"{name}.png", 255 - mri // 2)
    return root


def _json(result) -> dict:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_json_has_exactly_the_documented_shape(run_cli, examples: Path) -> None:
    doc = _json(run_cli("evaluate", examples / "PET-MRI", "-m", "average", "--metrics", FAST, "--json", "-q"))
    assert set(doc) == {"metrics", "methods", "pairs"}
    assert doc["pairs"] == {"PET-MRI": {"metrics": doc["metrics"], "methods": doc["methods"]}}
    assert doc["metrics"] == ["SSIM", "PSNR", "Qcv"]
    method = doc["methods"]["average"]
    assert set(method) == {"n", "n_finite", "mean", "std", "per_image"}
    assert method["n"] == 2 and method["n_finite"] == {"SSIM": 2, "PSNR": 2, "Qcv": 2}
    assert set(method["per_image"]) == {"25022.png", "30066.png"}
    for scores in (method["mean"], method["std"], *method["per_image"].values()):
        assert set(scores) == {"SSIM", "PSNR", "Qcv"}
        assert all(isinstance(v, float) for v in scores.values())
    values = [method["per_image"][f]["SSIM"] for f in ("25022.png", "30066.png")]
    assert method["mean"]["SSIM"] == pytest.approx(np.mean(values))
    assert method["std"]["SSIM"] == pytest.approx(np.std(values, ddof=1))


def test_a_parent_folder_gives_one_object_per_pair_kind(run_cli, examples: Path) -> None:
    doc = _json(run_cli("evaluate", examples, "-m", "maximum", "--metrics", "PSNR", "--json", "-q"))
    assert set(doc) == {"pairs"}
    assert set(doc["pairs"]) == {"CT-MRI", "PET-MRI", "SPECT-MRI"}
    assert all(set(kind["methods"]) == {"maximum"} for kind in doc["pairs"].values())


def test_scoring_files_fused_elsewhere_equals_fusing_here(run_cli, examples: Path, tmp_path: Path) -> None:
    pairs = examples / "SPECT-MRI"
    fused = tmp_path / "fused"
    assert run_cli("fuse", pairs / "MRI", pairs / "SPECT", "-o", fused, "-m", "laplacian", "-q").code == 0
    doc = _json(
        run_cli(
            "evaluate",
            pairs,
            "-m",
            "laplacian",
            "--fused",
            f"files={fused}",
            "--metrics",
            "MI,SSIM,Qcb",
            "--json",
            "-q",
        )
    )
    assert doc["methods"]["files"]["per_image"] == doc["methods"]["laplacian"]["per_image"]


def test_the_best_method_is_marked_in_every_output(run_cli, tmp_path: Path) -> None:
    pairs = _synthetic_set(tmp_path / "set")
    copy, noise = tmp_path / "copy", tmp_path / "noise"
    shutil.copytree(pairs / "MRI", copy)
    rng = np.random.default_rng(7)
    for name in ("a", "b"):
        _write_gray(noise / f"{name}.png", rng.integers(0, 256, (48, 48)))
    out = tmp_path / "report"
    result = run_cli(
        "evaluate",
        pairs,
        "--fused",
        f"copy={copy}",
        "--fused",
        f"noise={noise}",
        "--metrics",
        FAST,
        "--out",
        out,
    )
    assert result.code == 0, result.stderr
    assert "*" in result.stdout and "SSIM ↑" in result.stdout and "Qcv ↓" in result.stdout
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for metric in ("SSIM", "PSNR", "Qcv"):
        means = {r["method"]: float(r["mean"]) for r in rows if r["metric"] == metric}
        pick = min if metric == "Qcv" else max  # Qcv: lower is better
        expected = pick(means, key=means.__getitem__)
        assert [r["method"] for r in rows if r["metric"] == metric and r["best"] == "True"] == [expected]
    # A copy of the MRI is closer to the sources than noise on these two measures.
    assert {r["metric"] for r in rows if r["method"] == "copy" and r["best"] == "True"} >= {"SSIM", "PSNR"}
    assert "| copy | **" in (out / "summary.md").read_text()


def test_reports_match_the_json(run_cli, examples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("evaluate", examples, "-m", "average", "-m", "maximum", "--metrics", FAST, "-q")
    doc = _json(run_cli(*args, "--json", "--out", out))
    assert {p.name for p in out.iterdir()} == {"per_image.csv", "summary.csv", "summary.md", "summary.json"}
    assert json.loads((out / "summary.json").read_text()) == doc
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 * 2  # pair kinds x methods x images
    row = next(
        r for r in rows if r["pairs"] == "CT-MRI" and r["method"] == "maximum" and r["image"] == "2004.png"
    )
    assert float(row["PSNR"]) == doc["pairs"]["CT-MRI"]["methods"]["maximum"]["per_image"]["2004.png"]["PSNR"]
    assert "## PET-MRI (2 pairs" in (out / "summary.md").read_text()


def test_plots_are_written_with_out(run_cli, examples: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = run_cli(
        "evaluate",
        examples / "CT-MRI",
        "-m",
        "average",
        "-m",
        "maximum",
        "--metrics",
        FAST,
        "--out",
        out,
        "--plot",
        "-q",
    )
    assert result.code == 0, result.stderr
    for name in ("CT-MRI_boxplots.png", "CT-MRI_radar.png"):
        assert Image.open(out / name).size[0] > 200


def test_plot_needs_out(run_cli, examples: Path) -> None:
    result = run_cli("evaluate", examples / "CT-MRI", "-m", "average", "--plot")
    assert result.code == 1 and result.stderr.strip() == "error: --plot writes files: give --out DIR as well"


def test_default_line_up_scores_classical_rules_and_skips_networks_without_weights(
    run_cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path / "no-weights")
    pairs = _synthetic_set(tmp_path / "set", size=64)
    result = run_cli("evaluate", pairs, "--metrics", "PSNR", "--json")
    doc = _json(result)
    assert {"average", "maximum", "laplacian"} <= set(doc["methods"])
    assert "lwnet" not in doc["methods"]
    assert doc["skipped"]["lwnet"].startswith("checkpoint")
    assert "skipped lwnet on CT-MRI: checkpoint" in result.stderr


def test_perfect_scores_become_null_in_json(run_cli, tmp_path: Path) -> None:
    """F = A = B gives PSNR = inf: JSON has no Infinity, so it is null, and the file parses."""
    root = tmp_path / "set"
    image = np.random.default_rng(3).integers(0, 256, (48, 48))
    for folder in ("MRI", "CT", "fused"):
        _write_gray(root / folder / "x.png", image)
    doc = _json(
        run_cli(
            "evaluate", root, "--fused", f"same={root / 'fused'}", "--metrics", "PSNR,SSIM", "--json", "-q"
        )
    )
    same = doc["methods"]["same"]
    assert same["per_image"]["x.png"]["PSNR"] is None and same["mean"]["PSNR"] is None
    assert same["mean"]["SSIM"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evaluate", "no-such-folder"), "error: pair folder not found: no-such-folder"),
        (("evaluate", "{tmp}/few", "-m", "average"), "error: no pairs in"),
        (("evaluate", "{set}", "--metrics", "SSIM,nope"), "error: unknown metric 'nope'"),
        (("evaluate", "{set}", "-m", "nope"), "error: unknown model 'nope'"),
        (("evaluate", "{set}", "--fused", "no-equals-sign"), "error: --fused takes LABEL=DIR"),
        (("evaluate", "{set}", "--fused", "x={tmp}/missing"), "error: --fused x: folder not found"),
        (
            ("evaluate", "{set}", "--fused", "average={set}/MRI", "-m", "average"),
            "error: method label used twice",
        ),
        (("evaluate", "{set}", "--fused", "x={tmp}/few"), "error: --fused x: 1 fused image(s) missing"),
        (("evaluate", "{set}", "--out", "{set}/MRI/a.png", "-m", "average"), "error: --out must be a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    run_cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    pairs = _synthetic_set(tmp_path / "set")
    _write_gray(tmp_path / "few" / "a.png", np.zeros((48, 48)))
    result = run_cli(*(a.format(tmp=tmp_path, set=pairs) for a in args))
    assert result.code == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_fused_images_of_the_wrong_size_are_refused(run_cli, tmp_path: Path) -> None:
    pairs = _synthetic_set(tmp_path / "set")
    for name in ("a", "b"):
        _write_gray(tmp_path / "small" / f"{name}.png", np.zeros((32, 32)))
    result = run_cli("evaluate", pairs, "--fused", f"s={tmp_path / 'small'}")
    assert result.code == 1 and "is 32x32, its sources are 48x48" in result.stderr


def test_resize_scores_pairs_whose_sizes_differ_as_fuse_resize_fuses_them(run_cli, tmp_path: Path) -> None:
    """Without --resize a size mismatch is refused (the message names --resize); with it the
    second image is resized to the MRI's size exactly as ``medfuse fuse --resize`` does, so
    fusing here and scoring fuse's files give the same numbers."""
    root = tmp_path / "set"
    rng = np.random.default_rng(5)
    _write_gray(root / "MRI" / "a.png", rng.integers(0, 256, (48, 48)))
    _write_gray(root / "CT" / "a.png", rng.integers(0, 256, (32, 40)))
    fused = tmp_path / "fused"
    made = run_cli("fuse", root / "MRI", root / "CT", "-o", fused, "-m", "average", "--resize", "-q")
    assert made.code == 0, made.stderr
    args = ("evaluate", root, "-m", "average", "--fused", f"files={fused}", "--metrics", "PSNR,SSIM")

    refused = run_cli(*args, "--json", "-q")
    assert refused.code == 1
    assert "sizes differ" in refused.stderr and "pass --resize" in refused.stderr

    doc = _json(run_cli(*args, "--resize", "--json", "-q"))
    scores = doc["methods"]["average"]["per_image"]
    assert set(scores) == {"a.png"} and all(math.isfinite(v) for v in scores["a.png"].values())
    assert doc["methods"]["files"]["per_image"] == scores


def test_luma_is_exact_for_gray_and_within_one_level_of_pil_for_colour(examples: Path) -> None:
    gray = read_image(examples / "CT-MRI" / "CT" / "2004.png")
    assert np.array_equal(luma8(gray.pixels), np.asarray(Image.open(gray.path), dtype=np.float64))
    colour_path = examples / "PET-MRI" / "PET" / "25022.png"
    ours = luma8(read_image(colour_path).pixels)
    pil = np.asarray(Image.open(colour_path).convert("RGB").convert("YCbCr"))[..., 0].astype(np.float64)
    # PIL truncates where we round: never more than one level apart, never below PIL.
    assert (ours - pil).min() >= 0 and (ours - pil).max() <= 1
    y, _ = split_luma(read_image(colour_path).pixels)
    assert np.array_equal(ours, np.rint(y.astype(np.float64) * 255))


def test_radar_normalisation_respects_direction_and_area() -> None:
    result = PairSetResult(
        PairSet("CT-MRI", "CT-MRI", Path("."), ()),
        ["SSIM", "PSNR", "Qcv"],
        {
            "good": MethodScores({"x": {"SSIM": 0.9, "PSNR": 30.0, "Qcv": 10.0}}),
            "bad": MethodScores({"x": {"SSIM": 0.5, "PSNR": 20.0, "Qcv": 90.0}}),
        },
    )
    radii = normalised_means(result)
    assert radii == {"good": [1.0, 1.0, 1.0], "bad": [0.0, 0.0, 0.0]}
    assert area_ratio([1.0, 1.0, 1.0]) == 1.0
    assert area_ratio([1.0, 0.0, 1.0, 0.0]) == 0.0
    assert area_ratio([0.5] * 6) == pytest.approx(0.25)
    assert math.isclose(area_ratio([1.0, 1.0, 0.0]), 1 / 3)


def test_metric_presets() -> None:
    assert parse_metrics("paper") == ["VIF", "MI", "UQI", "SSIM", "PSNR", "Qcb", "ARI", "FM", "CC"]
    assert parse_metrics("LYWNET") == ["SSIM", "PSNR", "MI", "ARI", "FM", "CC"]
    assert len(parse_metrics("all")) == 40  # 21 + the 19 of "balance"
    assert parse_metrics(" ssim , qabf ") == ["SSIM", "Qabf"]


def test_best_needs_two_methods_to_compare() -> None:
    pair_set = PairSet("CT-MRI", "CT-MRI", Path("."), ())
    one = PairSetResult(pair_set, ["SSIM"], {"only": MethodScores({"x": {"SSIM": 0.5}})})
    assert one.best("SSIM") is None
    one.methods["other"] = MethodScores({"x": {"SSIM": math.nan}})
    assert one.best("SSIM") is None  # a method without a finite mean does not count
    one.methods["third"] = MethodScores({"x": {"SSIM": 0.7}})
    assert one.best("SSIM") == "third"


def test_one_fuser_with_two_checkpoints_in_one_run(run_cli, examples: Path) -> None:
    spect = examples / "SPECT-MRI"
    result = run_cli(
        "evaluate",
        spect,
        "-m",
        "lwnet",
        "-m",
        "as-ct=lwnet@ct",
        "-m",
        "mine=lwnet@weights/lwnet-ct.safetensors",
        "--metrics",
        "SSIM",
        "--json",
    )
    assert result.code == 0, result.stderr
    methods = json.loads(result.stdout)["methods"]
    assert set(methods) == {"lwnet", "as-ct", "mine"}
    # each names the file it used: the shipped one's pinned sha256, the --weights file's own
    ct_file = hashlib.sha256((weights.BUNDLED_DIR / "lwnet-ct.safetensors").read_bytes()).hexdigest()
    lwnet = get_fuser_spec("lwnet")
    assert methods["lwnet"]["checkpoints"] == {"lwnet.functional": lwnet.checkpoint("functional").sha256}
    assert methods["as-ct"]["checkpoints"] == {"lwnet.ct": ct_file}
    assert methods["mine"]["checkpoints"] == {"--weights weights/lwnet-ct.safetensors": ct_file}
    assert methods["as-ct"]["per_image"] == methods["mine"]["per_image"]  # the same weights
    assert methods["lwnet"]["per_image"] != methods["as-ct"]["per_image"]  # functional vs CT weights
    for bad in ("average@ct", "lwnet@nope", "=lwnet", "nope", "lwnet@", "mine=lwnet@ ", "lwnet@/dev/null"):
        refused = run_cli("evaluate", spect, "-m", bad)
        assert refused.code == 1 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
        if bad.endswith(("@", "@ ")):  # not the current folder "."
            assert "names no checkpoint or file after '@'" in refused.stderr
    assert "not a regular file" in refused.stderr  # /dev/null: said as --weights says it


def test_the_default_line_up_leaves_out_the_slow_lywnet(run_cli, examples: Path) -> None:
    result = run_cli("evaluate", examples / "CT-MRI", "--metrics", "SSIM", "--json", "-q")
    assert result.code == 0
    assert "lywnet" not in json.loads(result.stdout)["methods"]
    assert "lwnet" in json.loads(result.stdout)["methods"]


def test_out_keeps_existing_files_without_overwrite(run_cli, examples: Path, tmp_path: Path) -> None:
    """As ``fuse`` does: files that exist are refused before any scoring, replaced with --overwrite."""
    out = tmp_path / "out"
    args = ("evaluate", examples / "CT-MRI", "-m", "average", "--metrics", FAST, "--out", out, "-q")
    assert run_cli(*args).code == 0
    (out / "summary.md").write_text("mine")
    refused = run_cli(*args)
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: --out: 4 output file(s) exist in {out}")
    assert "pass --overwrite to replace them" in refused.stderr
    assert (out / "summary.md").read_text() == "mine"
    assert run_cli(*args, "--overwrite").code == 0
    assert (out / "summary.md").read_text().startswith("# medfuse evaluate")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "CT-MRI_radar.png").write_bytes(b"mine")
    with_plot = ("evaluate", examples / "CT-MRI", "-m", "average", "--metrics", FAST, "--out", plots, "-q")
    refused = run_cli(*with_plot, "--plot")
    assert refused.code == 1 and "CT-MRI_radar.png" in refused.stderr
    assert {p.name for p in plots.iterdir()} == {"CT-MRI_radar.png"}  # nothing else written
    assert run_cli(*with_plot).code == 0  # without --plot the figure is not an output
    assert (plots / "CT-MRI_radar.png").read_bytes() == b"mine"


def test_a_report_does_not_change_the_scores(run_cli, examples: Path, tmp_path: Path) -> None:
    args = ("evaluate", examples, "-m", "average", "--metrics", FAST, "--json", "-q")
    plain = _json(run_cli(*args))
    assert _json(run_cli(*args, "--report", tmp_path / "report")) == plain
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == plain


def test_summary_json_counts_the_finite_scores_as_the_csv_and_the_page_do(run_cli, tmp_path: Path) -> None:
    """Pair x is a perfect copy (PSNR inf), pair y is not: n is 2 images, PSNR's mean is over 1."""
    root = _synthetic_set(tmp_path / "set", names=("x", "y"))
    fused = tmp_path / "fused"
    _write_gray(fused / "x.png", np.asarray(Image.open(root / "MRI" / "x.png")))
    _write_gray(root / "CT" / "x.png", np.asarray(Image.open(root / "MRI" / "x.png")))
    _write_gray(fused / "y.png", np.asarray(Image.open(root / "CT" / "y.png")) // 2)
    report, out = tmp_path / "report", tmp_path / "out"
    args = ("evaluate", root, "--fused", f"f={fused}", "--metrics", "PSNR,SSIM", "-q")
    assert run_cli(*args, "--report", report, "--out", out).code == 0
    for folder in (report, out):
        doc = json.loads((folder / "summary.json").read_text())
        method = doc["methods"]["f"]
        assert method["n"] == 2 and method["n_finite"] == {"PSNR": 1, "SSIM": 2}
        assert doc["pairs"] == {"CT-MRI": {"metrics": doc["metrics"], "methods": doc["methods"]}}
        rows = {r["metric"]: r["n"] for r in csv.DictReader((folder / "summary.csv").open())}
        assert rows == {"PSNR": "1", "SSIM": "2"}
    assert "n = 1 of 2" in (report / "index.html").read_text(encoding="utf-8")


def test_a_failed_overwrite_leaves_the_old_tables_as_they_were(
    run_cli, examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_full_on
) -> None:
    """With --overwrite the new files replace the old ones only once all are written: a full
    disk at the third file leaves every old file, and no new one, in place."""
    out = tmp_path / "out"
    args = ("evaluate", examples / "CT-MRI", "-m", "average", "--metrics", FAST, "--out", out, "-q")
    assert run_cli(*args, "--plot").code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 6
    disk_full_on("summary.md")
    failed = run_cli(*args, "--plot", "--overwrite", "--metrics", "SSIM")
    assert failed.code == 1 and "No space left on device" in failed.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left either
    monkeypatch.undo()
    (out / "summary.csv").unlink()
    (out / "summary.csv").mkdir()
    refused = run_cli(*args, "--overwrite")  # refused before scoring: a folder cannot be replaced
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: --out: {out / 'summary.csv'} is a folder")


def test_a_file_named_like_a_shipped_checkpoint_does_not_replace_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("lwnet.ct", "ct", "mine"):
        (tmp_path / name).write_bytes(b"not weights")
    assert parse_model("x=lwnet@lwnet.ct") == parse_model("x=lwnet@ct")
    assert parse_model("x=lwnet@ct").checkpoint == "lwnet.ct" and parse_model("x=lwnet@ct").weights is None
    assert parse_model("x=lwnet@mine").weights == Path("mine")  # no checkpoint of that name: the file
    assert parse_model("x=lwnet@./ct").weights == Path("ct")  # a path names the file
    (tmp_path / "folder").mkdir()
    for path in ("folder", "sub/none", "/dev/null"):  # files, refused when read as --weights is
        assert parse_model(f"x=lwnet@{path}").weights == Path(path)
