"""`medfuse fuse` when the world misbehaves: outputs that cannot be written, full disks, standard
output that fails or closes, concurrent runs into one folder, and interrupts.

Each section is one kind of failure; each test one case of it. Every case ends the same way: one
line on stderr (or none, for a closed pipe), a known exit status, no temporary file left, and no
output file that is partial or that replaced one it should have kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medfuse_cli import atomic
from medfuse_cli.io import read_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MRI = EXAMPLES / "SPECT-MRI" / "MRI" / "10018.png"
SPECT = EXAMPLES / "SPECT-MRI" / "SPECT" / "10018.png"
MEDFUSE = [sys.executable, "-m", "medfuse_cli"]


def make_pairs(root: Path, count: int, size: int = 64) -> tuple[Path, Path]:
    """``count`` random pairs (gray MRI, colour SPECT) in ``root/MRI`` and ``root/SPECT``."""
    rng = np.random.default_rng(count)
    mri_dir, spect_dir = root / "MRI", root / "SPECT"
    mri_dir.mkdir(parents=True)
    spect_dir.mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(mri_dir / f"{index:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            spect_dir / f"{index:03d}.png"
        )
    return mri_dir, spect_dir


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def fail_in(folder: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating any file in ``folder`` fails with ``code``, as on a read-only mount or, for a
    non-root user, a folder of mode 555 (tests run as root, where that mode stops nothing)."""
    real_open = os.open

    def refusing_open(path: str | os.PathLike, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "open", refusing_open)


def disk_full(partial: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a temporary file fails with ENOSPC, after writing half of it when ``partial``."""
    real_write_bytes = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if not self.name.endswith(".tmp"):
            return real_write_bytes(self, data)
        if partial:
            real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)


def appear_meanwhile(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run writes ``target`` while this one encodes its PNG: after every check, before
    the rename."""
    import medfuse_cli.io as io_module

    real_encode = io_module.encode_png

    def encode_while_another_run_writes(pixels: np.ndarray, bit_depth: int) -> bytes:
        data = real_encode(pixels, bit_depth)
        if not target.exists():
            target.write_bytes(b"the other run's output")
        return data

    monkeypatch.setattr(io_module, "encode_png", encode_while_another_run_writes)


# --- 3. an output folder that cannot be written ----------------------------------------------


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS], ids=["no permission", "read-only"])
def test_single_output_in_an_unwritable_folder(run_cli, tmp_path: Path, monkeypatch, code: int) -> None:
    fail_in(tmp_path, code, monkeypatch)
    result = run_cli("fuse", MRI, SPECT, "-o", tmp_path / "fused.png", "-m", "average")
    assert result.code == 1
    assert one_error_line(result.stderr) == f"error: cannot write in {tmp_path}: {os.strerror(code)}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS], ids=["no permission", "read-only"])
def test_folder_run_into_an_unwritable_folder(run_cli, tmp_path: Path, monkeypatch, code: int) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    fail_in(out, code, monkeypatch)
    result = run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "--json")
    assert result.code == 1
    assert one_error_line(result.stderr) == f"error: cannot write in {out}: {os.strerror(code)}"
    assert result.stdout == "" and list(out.iterdir()) == []


def test_output_folder_that_cannot_be_created(run_cli, tmp_path: Path) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 2)
    (tmp_path / "a-file").write_text("not a folder")
    result = run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "a-file" / "out", "-m", "average")
    assert result.code == 1
    assert one_error_line(result.stderr).startswith(f"error: cannot create the output folder {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "in"]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs, where no file can be created")
def test_a_real_folder_where_no_file_can_be_created(run_cli, tmp_path: Path) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path, 2)
    single = run_cli("fuse", MRI, SPECT, "-o", "/sys/medfuse-test.png", "-m", "average")
    folder = run_cli("fuse", mri_dir, spect_dir, "-o", "/sys", "-m", "average")
    for result in (single, folder):
        assert result.code == 1
        assert one_error_line(result.stderr).startswith("error: cannot write in /sys: ")


# --- 4. a full disk ----------------------------------------------------------------------------


def test_single_pair_onto_a_full_disk(run_cli, tmp_path: Path, monkeypatch) -> None:
    disk_full(True, monkeypatch)
    out = tmp_path / "fused.png"
    result = run_cli("fuse", MRI, SPECT, "-o", out, "-m", "average")
    assert result.code == 1
    assert one_error_line(result.stderr) == f"error: cannot write {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # neither a partial output nor a temporary file


def test_folder_run_onto_a_full_disk_reports_each_pair(run_cli, tmp_path: Path, monkeypatch) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 3)
    out = tmp_path / "out"
    disk_full(False, monkeypatch)
    result = run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "--json", "-q")
    assert result.code == 1
    summary = json.loads(result.stdout)
    assert summary["written"] == 0
    assert [f["error"] for f in summary["failed"]] == [
        f"cannot write {out / name}: No space left on device" for name in ("000.png", "001.png", "002.png")
    ]
    assert not out.exists()  # it wrote nothing, so the folder it created is gone


# --- 5. standard output that fails or closes ---------------------------------------------------


def python_env(unbuffered: bool) -> dict[str, str]:
    """The environment, with Python's standard streams unbuffered (``PYTHONUNBUFFERED``, as on
    this project's machines: a write may then take only part of the bytes) or buffered."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env


STREAMS = pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])


@STREAMS
@pytest.mark.parametrize("json_summary", [False, True], ids=["png", "json"])
def test_stdout_onto_a_full_device_is_an_error(tmp_path: Path, unbuffered: bool, json_summary: bool) -> None:
    output = ["-o", tmp_path / "f.png", "--json"] if json_summary else ["-o", "-"]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [*MEDFUSE, "fuse", MRI, SPECT, *output, "-m", "average"],
            stdout=full,
            stderr=subprocess.PIPE,
            env=python_env(unbuffered),
        )
    assert done.returncode == 1
    assert done.stderr.decode() == "error: cannot write to standard output: No space left on device\n"


def test_stdout_that_fills_up_mid_png_is_an_error(run_cli, monkeypatch) -> None:
    """The reported case: 16 KB of the PNG fit, then the disk is full."""
    taken: list[int] = []

    def fill_up(data: memoryview) -> int:
        room = 16384 - sum(taken)
        if data and not room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken.append(min(room, len(data)))
        return taken[-1]

    fake = SimpleNamespace(flush=lambda: None, buffer=SimpleNamespace(write=fill_up, flush=lambda: None))
    monkeypatch.setattr(sys, "stdout", fake)
    result = run_cli("fuse", MRI, SPECT, "-o", "-", "-m", "average")
    assert result.code == 1
    assert one_error_line(result.stderr) == "error: cannot write to standard output: No space left on device"


@STREAMS
def test_a_closed_pipe_is_a_quiet_exit(unbuffered: bool) -> None:
    """``medfuse fuse ... -o - | head -c 100``: the ~83 KB PNG outgrows the 64 KB pipe, so the
    write meets the closed pipe for certain."""
    process = subprocess.Popen(
        [*MEDFUSE, "fuse", MRI, SPECT, "-o", "-", "-m", "average"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=python_env(unbuffered),
    )
    head = os.read(process.stdout.fileno(), 100)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert head.startswith(b"\x89PNG") and stderr == b""


# --- 9. two runs into one folder ---------------------------------------------------------------


def test_a_file_that_appears_before_the_rename_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def write_while_another_writes(tmp: Path) -> None:
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        atomic.write_atomically(target, write_while_another_writes, overwrite=False)
    assert target.read_bytes() == b"theirs" and temporaries(tmp_path) == []
    atomic.write_atomically(target, lambda tmp: tmp.write_bytes(b"mine"), overwrite=True)
    assert target.read_bytes() == b"mine" and temporaries(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "best effort"])
def test_without_hard_links_the_name_is_still_not_taken(tmp_path: Path, monkeypatch, renameat2: bool) -> None:
    def no_hard_links(*_: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(atomic.os, "link", no_hard_links)
    if not renameat2:
        monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    elif atomic._renameat2() is None:
        pytest.skip("no renameat2 here")
    target = tmp_path / "out.bin"
    atomic.write_atomically(target, lambda tmp: tmp.write_bytes(b"first"), overwrite=False)
    with pytest.raises(FileExistsError):
        atomic.write_atomically(target, lambda tmp: tmp.write_bytes(b"second"), overwrite=False)
    assert target.read_bytes() == b"first" and temporaries(tmp_path) == []


def test_single_pair_keeps_a_file_another_run_wrote_meanwhile(run_cli, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "fused.png"
    appear_meanwhile(out, monkeypatch)
    result = run_cli("fuse", MRI, SPECT, "-o", out, "-m", "average")
    assert result.code == 1
    assert one_error_line(result.stderr).startswith(f"error: output exists: {out} (pass --overwrite")
    assert out.read_bytes() == b"the other run's output" and temporaries(tmp_path) == []


@pytest.mark.parametrize("flag", [None, "--skip-existing"])
def test_folder_run_keeps_a_file_another_run_wrote_meanwhile(
    run_cli, tmp_path: Path, monkeypatch, flag: str | None
) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 3)
    out = tmp_path / "out"
    appear_meanwhile(out / "001.png", monkeypatch)
    result = run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "--json", *[flag] * bool(flag))
    summary = json.loads(result.stdout)
    rows = {row["pair"]: row for row in summary["pairs"]}
    if flag:
        assert result.code == 0 and summary["skipped"] == 1 and rows["001"]["skipped"] is True
    else:
        assert result.code == 1 and rows["001"]["error"].startswith(f"output exists: {out / '001.png'}")
    assert summary["written"] == 2
    assert (out / "001.png").read_bytes() == b"the other run's output" and temporaries(out) == []


def test_concurrent_runs_write_each_file_once(tmp_path: Path) -> None:
    from medfuse_cli.pipeline import Fusion, PairJob, fuse_folders

    mri_dir, spect_dir = make_pairs(tmp_path / "in", 40)
    out = tmp_path / "out"
    out.mkdir()
    jobs = [PairJob(p.stem, p, spect_dir / p.name, out / p.name) for p in sorted(mri_dir.iterdir())]
    start = threading.Barrier(2)
    results: list[list] = []

    def run() -> None:
        fusion = Fusion("average", "cpu")
        start.wait()
        results.append(fuse_folders(fusion, jobs, batch_size=4, existing="refuse"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [o.name for outcomes in results for o in outcomes if o.written]
    refused = [o for outcomes in results for o in outcomes if o.error]
    assert sorted(written) == sorted(job.name for job in jobs)  # each file by exactly one run
    assert len(refused) == len(jobs) and all(o.error.startswith("output exists") for o in refused)
    assert all(read_image(job.output).size == (64, 64) for job in jobs) and temporaries(out) == []


# --- 10. standard output for one thing ---------------------------------------------------------


def test_json_and_png_on_stdout_are_refused_before_any_work(run_cli, tmp_path: Path) -> None:
    result = run_cli("fuse", tmp_path / "missing.png", SPECT, "-o", "-", "--json", "-m", "nosuchmodel")
    assert result.code == 1 and result.stdout == ""
    assert one_error_line(result.stderr).startswith("error: --json and -o - both use standard output")


# --- 11. interrupts, and what an interrupted run leaves --------------------------------------


def _sigint_as_a_terminal_gives_it() -> None:
    """In the child before it runs: SIGINT's default action. A non-interactive shell starts its
    background jobs (``cmd &``, ``nohup``) with SIGINT ignored, their children inherit that, and
    Python then never turns Ctrl-C into KeyboardInterrupt: the tests below would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when_first_output_appears(args: list, out: Path) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_a_terminal_gives_it,
    )
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*.png"))) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def test_interrupted_folder_run_resumes_to_the_same_bytes(run_cli, tmp_path: Path) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 300)
    out = tmp_path / "out"
    base = [*MEDFUSE, "fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "-q", "--batch-size", "2"]
    interrupted = _interrupt_when_first_output_appears(base, out)
    assert (interrupted.returncode, interrupted.stderr) == (130, "interrupted\n")
    kept = sorted(p.name for p in out.iterdir())
    assert 0 < len(kept) < 300 and temporaries(out) == []
    assert all(read_image(out / name).size == (64, 64) for name in kept)  # each one complete

    refused = run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average")
    assert refused.code == 1 and "--skip-existing" in one_error_line(refused.stderr)
    resumed = run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "--skip-existing", "--json")
    summary = json.loads(resumed.stdout)
    assert resumed.code == 0 and (summary["skipped"], summary["written"]) == (len(kept), 300 - len(kept))

    whole = tmp_path / "whole"
    assert run_cli("fuse", mri_dir, spect_dir, "-o", whole, "-m", "average", "-q").code == 0
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in whole.iterdir()}
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == digest


def test_interrupt_during_start_up(tmp_path: Path) -> None:
    """A real SIGINT while the CLI is still being imported (sent when ``typer`` starts to load)."""
    code = (
        "import builtins, os, signal, sys\n"
        "real_import = builtins.__import__\n"
        "def interrupting_import(name, *args, **kwargs):\n"
        "    if name == 'typer':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupting_import\n"
        "sys.argv = ['medfuse', *sys.argv[1:]]\n"
        "import runpy\n"
        "runpy.run_module('medfuse_cli', run_name='__main__')\n"
    )
    args = ["fuse", MRI, SPECT, "-o", tmp_path / "f.png", "-m", "average"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_sigint_as_a_terminal_gives_it,
    )
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("medfuse") is None, reason="the console script is not installed")
@pytest.mark.parametrize("delay", [0.1, 0.2, 0.35, 0.5])
def test_interrupt_of_the_console_script_soon_after_start(tmp_path: Path, delay: float) -> None:
    """From 0.1 s to 0.5 s in, the command imports the CLI, parses its arguments, imports torch.
    (Before about 0.05 s Python itself is still starting: its own traceback, not ours.)"""
    process = subprocess.Popen(
        ["medfuse", "fuse", MRI, SPECT, "-o", tmp_path / "f.png", "-m", "average"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_a_terminal_gives_it,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr) == (130, "interrupted\n")


def test_temporary_files_of_killed_runs_are_removed(run_cli, tmp_path: Path) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 2)
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    out = tmp_path / "out"
    out.mkdir()
    from medfuse_cli.atomic import _HOST

    other_host = "0" * 8 if _HOST != "0" * 8 else "1" * 8
    left = {
        "dead": out / f".000.png.{_HOST}.{dead_pid.pid}.0123abcd.tmp",
        "dead, earlier version": out / f".002.png.{dead_pid.pid}.0123abcd.tmp",
        "live": out
        / f".001.png.{_HOST}.{os.getpid()}.89abcdef.tmp",  # a concurrent run's: not ours to remove
        # Another machine's (a SLURM array on a shared folder): its pid means nothing here.
        "other machine": out / f".003.png.{other_host}.{dead_pid.pid}.0123abcd.tmp",
        "other": out / ".notes.tmp",  # not of our pattern
    }
    for path in left.values():
        path.write_bytes(b"")
    assert run_cli("fuse", mri_dir, spect_dir, "-o", out, "-m", "average", "-q").code == 0
    kept = {name for name, path in left.items() if path.exists()}
    assert kept == {"live", "other machine", "other"}
    stale_beside_single = tmp_path / f".single.png.{_HOST}.{dead_pid.pid}.0123abcd.tmp"
    stale_beside_single.write_bytes(b"partial")
    assert run_cli("fuse", MRI, SPECT, "-o", tmp_path / "single.png", "-m", "average", "-q").code == 0
    assert not stale_beside_single.exists()


def test_overwrite_and_skip_existing_contradict(run_cli, tmp_path: Path) -> None:
    result = run_cli("fuse", MRI, SPECT, "-o", tmp_path / "f.png", "--overwrite", "--skip-existing")
    assert result.code == 1 and "--skip-existing" in one_error_line(result.stderr)


def test_skip_existing_keeps_the_file_of_a_single_pair(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "fused.png"
    out.write_bytes(b"keep me")
    result = run_cli("fuse", MRI, SPECT, "-o", out, "-m", "average", "--skip-existing", "--json")
    assert result.code == 0 and out.read_bytes() == b"keep me"
    assert json.loads(result.stdout)["skipped"] == 1


def test_a_run_that_writes_nothing_leaves_no_folder(run_cli, tmp_path: Path) -> None:
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 2)
    for bad in spect_dir.iterdir():
        bad.write_bytes(b"not a png")
    result = run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "new" / "out", "-m", "average", "-q")
    assert result.code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    kept = tmp_path / "existing"
    kept.mkdir()
    assert run_cli("fuse", mri_dir, spect_dir, "-o", kept, "-m", "average", "-q").code == 1
    assert kept.is_dir()  # there before the run: not the run's to remove


def test_an_interrupt_before_any_write_leaves_no_folder(run_cli, tmp_path: Path, monkeypatch) -> None:
    import medfuse_cli.pipeline

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(medfuse_cli.pipeline, "fuse_folders", interrupted)
    mri_dir, spect_dir = make_pairs(tmp_path / "in", 2)
    with pytest.raises(KeyboardInterrupt):  # carried to the console script, which says it in one line
        run_cli("fuse", mri_dir, spect_dir, "-o", tmp_path / "out", "-m", "average", "-q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_entry_reports_an_interrupt_in_one_line(monkeypatch, capsys) -> None:
    from medfuse_cli.cli import app, entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "main", interrupted)
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"
