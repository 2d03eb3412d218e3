"""Hostile input, round 3, on the command line and the builder: numeric options, outputs that are not regular
files, one file named twice, CSV quoting and formula cells, names with control characters, unreadable
folders, long-format ids, empty cells, sources that keep no texts."""

import csv
import io
import json
import os
import warnings

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from fakes import HashTextEncoder
from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from retriever.errors import UnpromptWarning
from retriever.evaluation.tables import read_pairs, read_predictions, write_short
from retriever.files import restore_cell, safe_cell
from retriever.index import TextIndex
from test_hostile_cli import clean_error, small_manifest

CAT = EXAMPLES / "cat.jpg"


@pytest.mark.parametrize("args, says", [
    (["score", "--truth", "t.csv", "--predictions", "t.csv", "--seed", "-1"], "must be at least 0, not -1"),
    (["score", "--truth", "t.csv", "--predictions", "t.csv", "--bootstrap", "1000000000000"], "at most 100000"),
    (["eval", "t.csv", "--bootstrap", "-5"], "at least 0, not -5"),
    (["build-index", "m.toml", "--out", "x", "--memory-budget", "inf"], "finite"),
    (["build-index", "m.toml", "--out", "x", "--memory-budget", "nan"], "finite"),
    (["train-regressor", "--prompts", "p.txt", "--lr", "-1"], "above 0"),
    (["train-regressor", "--prompts", "p.txt", "--val-fraction", "1.5"], "at most 0.9"),
    (["train-regressor", "--prompts", "p.txt", "--hidden", "-3"], "at least 0, not -3"),
    (["predict", "x.png", "--flavours", "-2"], "at least 0, not -2"),
])
def test_numeric_options_are_validated(args, says):
    res = run_cli(*args)
    assert says in clean_error(res), res.stderr


def test_outputs_that_are_not_regular_files_or_named_twice_are_refused(tmp_path, monkeypatch):
    import retriever.pipeline

    def no_models(*a, **k):
        raise AssertionError("models loaded before the outputs were checked")

    monkeypatch.setattr(retriever.pipeline.Interrogator, "load", no_models)
    monkeypatch.setattr(retriever.pipeline.Interrogator, "from_profile", no_models)
    assert "not a regular file" in clean_error(run_cli("predict", str(CAT), "--out", "/dev/null"))
    target = tmp_path / "real.csv"
    target.write_text("keep me\n")
    (tmp_path / "link.csv").symlink_to(target)
    assert "symbolic link" in clean_error(run_cli("predict", str(CAT), "--out", str(tmp_path / "link.csv")))
    os.mkfifo(tmp_path / "fifo")
    assert "not a regular file" in clean_error(run_cli("submit", str(EXAMPLES), "--out", str(tmp_path / "fifo")))
    same = clean_error(run_cli("submit", str(EXAMPLES), "--out", str(tmp_path / "s.csv"),
                               "--prompts-out", str(tmp_path / "." / "s.csv")))
    assert "--out and --prompts-out name the same file" in same
    assert target.read_text() == "keep me\n" and (tmp_path / "link.csv").is_symlink()
    assert not (tmp_path / "s.csv").exists()


def test_predict_csv_quotes_names_neutralises_formulas_and_survives_an_unreadable_folder(tmp_path, lite_profile,
                                                                                        monkeypatch):
    import api.cli.predict as predict

    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a\rb.jpg", "=HYPERLINK(1).jpg", "@sum.jpg"):
        (images / name).write_bytes(CAT.read_bytes())
    (images / "bad\nname.png").write_bytes(b"not a png")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_list = predict.list_images

    def list_images(folder):
        if os.fspath(folder) == str(locked):
            raise PermissionError(13, "Permission denied", str(folder))
        return real_list(folder)

    monkeypatch.setattr(predict, "list_images", list_images)
    monkeypatch.chdir(images)  # names as given: a cell that starts with "=" or "@"
    out = tmp_path / "p.csv"
    names = ["a\rb.jpg", "=HYPERLINK(1).jpg", "@sum.jpg", "bad\nname.png"]
    res = run_cli("predict", str(locked), *names, "--format", "csv", "--out", str(out))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.strip().splitlines() if not line.startswith("predict: ")]  # progress
    assert len(errors) == 2 and all(line.startswith("unprompt: error: ") for line in errors), errors
    assert "cannot list the folder (Permission denied)" in errors[0] and "bad\\nname.png" in errors[1]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "prompt", "negative_prompt", "error", "source", "generator"] and len(rows) == 1 + 5
    cells = {restore_cell(r[0]): r for r in rows[1:]}
    assert set(cells) == {str(locked), *names}
    assert cells["=HYPERLINK(1).jpg"][0] == "'=HYPERLINK(1).jpg" and cells["=HYPERLINK(1).jpg"][1]
    assert cells["@sum.jpg"][0] == "'@sum.jpg" and cells["a\rb.jpg"][0] == "a\rb.jpg"
    assert cells[str(locked)][3].startswith(str(locked)) and not cells[str(locked)][1]


def test_formula_cells_round_trip_through_unprompts_own_tables(tmp_path):
    assert safe_cell("=1+1") == "'=1+1" and safe_cell("-x") == "'-x" and safe_cell("a=b") == "a=b"
    write_short(tmp_path / "p.csv", ["=cmd", "plain", "a\rb"], ["+prompt", "@x", "-neg"])
    raw = (tmp_path / "p.csv").read_bytes().decode()
    assert "'=cmd" in raw and "\n=" not in raw and '"a\rb"' in raw
    back = read_predictions(tmp_path / "p.csv")
    assert dict(zip(back.ids, back.prompts)) == {"=cmd": "+prompt", "plain": "@x", "a\rb": "-neg"}


def test_long_format_ids_must_be_canonical(tmp_path):
    vals = np.random.default_rng(0).normal(size=384)
    rows = [f"b_{e}" if e != 1 else "b_00" for e in range(384)]
    (tmp_path / "t.csv").write_text("imgId_eId,val\n" + "".join(f"{k},{v}\n" for k, v in zip(rows, vals)))
    assert "<imgId>_<0..383>" in clean_error(run_cli("score", "--truth", str(tmp_path / "t.csv"), "--predictions",
                                                     str(tmp_path / "t.csv")))


def test_eval_refuses_empty_cells_instead_of_reading_none(tmp_path):
    (tmp_path / "t.csv").write_text(f"image,prompt\n{CAT},a cat\n{CAT},\n")
    with pytest.raises(Exception, match=r"empty 'prompt' in row\(s\) 2"):
        read_pairs(tmp_path / "t.csv")
    assert "empty 'prompt' in row(s) 2" in clean_error(run_cli("eval", str(tmp_path / "t.csv"), "--out",
                                                               str(tmp_path / "r")))


def test_a_source_that_keeps_no_texts_is_reported_and_skipped(tmp_path):
    (tmp_path / "blocked.txt").write_text("nsfw one\nnsfw two\n")
    manifest = load_manifest(small_manifest(tmp_path, 40, extra='[[sources]]\nname = "gone"\npath = "blocked.txt"\n'
                                                              'kind = "caption"\nblocked_words = ["nsfw"]\n'))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = build_index(manifest, HashTextEncoder(dim=16), tmp_path / "out", BuildOptions(progress=False))
    assert any(issubclass(w.category, UnpromptWarning) and "'gone' keeps no texts" in str(w.message) for w in seen)
    assert TextIndex.load(tmp_path / "out").record.count == 40 and "gone" not in report.embedded


def test_a_csv_source_missing_its_column_is_one_line(tmp_path):
    (tmp_path / "s.csv").write_text("caption\nhello\n")
    (tmp_path / "m.toml").write_text('name = "m"\n[[sources]]\nname = "s"\npath = "s.csv"\nkind = "caption"\n')
    res = run_cli("build-index", str(tmp_path / "m.toml"), "--out", str(tmp_path / "out"), "--profile", "lite", "--quiet")
    message = clean_error(res)
    assert "column 'text' not found" in message and len(message.strip().splitlines()) == 1, message


def test_file_names_that_are_not_utf8_are_escaped_in_every_format_and_cost_no_row(tmp_path, lite_profile):
    from retriever.files import printable

    images = tmp_path / "n"
    images.mkdir()
    (images / "cat.jpg").write_bytes(CAT.read_bytes())
    bad = os.fsdecode(b"bad\xff\xfe.jpg")
    (images / bad).write_bytes(CAT.read_bytes())
    (images / os.fsdecode(b"b2\xff.png")).write_bytes(b"not a png")
    assert printable(str(images / bad)).endswith("bad\\xff\\xfe.jpg") and printable("plain/é.jpg") == "plain/é.jpg"
    for fmt in ("csv", "tsv", "text", "jsonl"):
        out = tmp_path / f"n.{fmt}"
        res = run_cli("predict", str(images), "--format", fmt, "--out", str(out), "--no-embedding",
                      "--mode", "fast")
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "b2\\xff.png: not an image" in res.stderr
        text = out.read_bytes().decode("utf-8")  # strict: valid UTF-8
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            assert [r[0].rsplit("/", 1)[1] for r in rows[1:]] == ["b2\\xff.png", "bad\\xff\\xfe.jpg", "cat.jpg"]
            assert rows[2][1] and rows[3][1] and rows[1][3]
        elif fmt == "jsonl":
            records = [json.loads(line) for line in text.splitlines()]
            assert [r["image"].rsplit("/", 1)[1] for r in records] == ["b2\\xff.png", "bad\\xff\\xfe.jpg", "cat.jpg"]
            for r in records:
                json.dumps(r, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
        else:
            assert len(text.splitlines()) == 3


_SLOW_PREDICT = """
import sys, time
from pathlib import Path
import retriever.feed, retriever.pipeline
from api.cli import main

class Stub:
    profile = type("P", (), {"name": "stub"})()

def slow(*args, **kwargs):
    Path(sys.argv[2]).write_text("writing")  # the --out temporary is open now
    time.sleep(60)
    yield from ()

retriever.feed.start_decoders = lambda *a, **k: None
retriever.feed.interrogate_files = slow
retriever.pipeline.Interrogator.load = classmethod(lambda cls, profile=None: Stub())
sys.exit(main(["predict", sys.argv[1], "--format", "csv", "--out", sys.argv[3]]))
"""


def test_sigterm_during_predict_out_leaves_no_temporary_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    flag, out = tmp_path / "flag", tmp_path / "big.csv"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREDICT, str(CAT), str(flag), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), proc.poll()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "unprompt: error: terminated" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag"]


def test_atomic_write_removes_only_the_temporaries_of_dead_processes(tmp_path):
    import subprocess
    import sys

    from retriever.files import atomic_write

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale, live = tmp_path / f".x.csv.{dead}.tmp", tmp_path / ".x.csv.1.tmp"  # pid 1 is always alive
    other, lookalike = tmp_path / f".y.csv.{dead}.tmp", tmp_path / f".x.csv.7.tmp.{dead}.tmp"
    for p in (stale, live, other, lookalike):
        p.write_text("left over")
    with atomic_write(tmp_path / "x.csv") as tmp:
        tmp.write_text("new\n")
    assert (tmp_path / "x.csv").read_text() == "new\n"
    assert not stale.exists() and live.exists() and other.exists() and lookalike.exists()


def test_listed_entries_that_are_not_regular_files_get_error_rows_not_silence(tmp_path, lite_profile):
    folder = tmp_path / "L"
    (folder / "s").mkdir(parents=True)
    (folder / "s" / "cat.jpg").write_bytes(CAT.read_bytes())
    (folder / "cat.jpg").write_bytes(CAT.read_bytes())
    os.mkfifo(folder / "f.jpg")  # never opened: a FIFO would block the read
    (folder / "d.jpg").symlink_to("/nonexistent.jpg")
    (folder / "y.jpg").symlink_to(folder / "y.jpg")  # a loop
    (folder / "z.png").symlink_to("/dev/zero")
    (folder / "dir.jpg").mkdir()  # a folder named like an image is a folder, not an image
    for extra in ([], ["-r"]):
        res = run_cli("predict", str(folder), "--format", "tsv", *extra)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        rows = dict(line.split("\t") for line in res.stdout.splitlines())
        names = sorted(os.path.relpath(p, folder) for p in rows)
        assert names == sorted(["cat.jpg", "d.jpg", "f.jpg", "y.jpg", "z.png", *(["s/cat.jpg"] if extra else [])])
        assert rows[str(folder / "cat.jpg")] and not rows[str(folder / "f.jpg")]
        for name in ("d.jpg", "f.jpg", "y.jpg", "z.png"):
            assert f"{name}: " in res.stderr


def test_closed_stdout_a_junk_feedback_db_and_out_of_range_ports_are_one_line(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("unprompt", path=str(Path(sys.executable).parent))
    closed = subprocess.run(["sh", "-c", 'exec "$0" "$@" 1>&-', exe, "predict", str(CAT)],
                            capture_output=True, text=True, timeout=120)
    assert clean_error(closed).count("standard output is closed") == 1
    (tmp_path / "x.db").write_text("junk\n")
    res = run_cli("feedback", "export", "--out", str(tmp_path / "fb"), "--db", str(tmp_path / "x.db"))
    assert "cannot read the feedback database (file is not a database)" in clean_error(res)
    for command in ("doctor", "serve"):
        assert "must be at most 65535, not 99999" in clean_error(run_cli(command, "--port", "99999"))
        assert "must be at least 0, not -1" in clean_error(run_cli(command, "--port", "-1"))


def test_small_messages_read_cleanly(tmp_path):
    import struct
    import zlib

    from retriever.images import ImageRejected, admit_image

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[sources]]\nname = "a"\npath = "a.txt"\nbogus = 1\nother = 2\n')
    res = run_cli("build-index", str(bad), "--out", str(tmp_path / "idx"))
    message = clean_error(res)
    assert "is invalid: sources.0" in message and "\\n" not in message and "; sources.0" in message

    def png(w, h):
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))

    for w, h in ((0, 5), (5, 0)):
        with pytest.raises(ImageRejected, match=rf"zero side \({w}x{h}\)") as info:
            admit_image(png(w, h), name="z.png")
        assert info.value.reason == "bad_shape"

    write_short(tmp_path / "t.csv", ["a", "b"], ["x", "y"])
    (tmp_path / "p.csv").write_text("imgId,prompt\na,x\n,y\n")
    res = run_cli("score", "--truth", str(tmp_path / "t.csv"), "--predictions", str(tmp_path / "p.csv"))
    assert "empty 'imgId' in row(s) 2" in clean_error(res) and "None" not in res.stderr

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(CAT.read_bytes())
    (tmp_path / "imgs" / "a.txt").mkdir()
    res = run_cli("predict", str(tmp_path / "imgs"), "--sidecar", "txt")
    assert "a.txt; move them first" in clean_error(res) and "already have" not in res.stderr
