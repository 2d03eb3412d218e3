"""Dataset captioning: predict DIR --recursive --sidecar, resume after a kill, progress lines, flavours
validated, classic adds N flavours, distinct alternatives, unknown modes a clear error."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import EXAMPLES, REPO, run_cli


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "set"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(EXAMPLES / "cat.jpg", root / "cat.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", root / "a" / "coffee.jpg")
    shutil.copy(EXAMPLES / "clock.jpg", root / "a" / "b" / "clock.jpg")
    shutil.copy(EXAMPLES / "rocket.jpg", root / "a" / "b" / "rocket.jpg")
    (root / "a" / "notes.md").write_text("not an image")
    return root


def test_recursive_sidecars_skip_existing_and_overwrite(dataset, lite_interrogator):
    res = run_cli("predict", str(dataset))
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1
    assert "1 subfolder(s) not read; add --recursive" in res.stderr

    res = run_cli("predict", str(dataset), "--recursive", "--sidecar", "txt", "--format", "tsv")
    assert res.returncode == 0, res.stderr
    txts = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.txt"))
    assert txts == ["a/b/clock.txt", "a/b/rocket.txt", "a/coffee.txt", "cat.txt"]
    assert (dataset / "cat.txt").read_text() == lite_interrogator.interrogate(dataset / "cat.jpg").prompt + "\n"
    assert len(res.stdout.splitlines()) == 4
    progress = [line for line in res.stderr.splitlines() if line.startswith("predict: ")]
    assert progress and progress[-1].startswith("predict: 4/4 img (100%)")  # plain lines: stderr is no terminal

    (dataset / "cat.txt").write_text("kept\n")
    res = run_cli("predict", str(dataset), "-r", "--sidecar", "txt")
    assert res.returncode == 0 and res.stdout == "" and "4 image(s) already have a .txt caption" in res.stderr
    assert (dataset / "cat.txt").read_text() == "kept\n"
    res = run_cli("predict", str(dataset / "cat.jpg"), "--sidecar", "txt", "--overwrite")
    assert res.returncode == 0 and (dataset / "cat.txt").read_text() != "kept\n"

    res = run_cli("predict", str(dataset / "a"), "-r", "--sidecar", "json", "--mode", "classic")
    assert res.returncode == 0, res.stderr
    data = json.loads((dataset / "a" / "coffee.json").read_text())
    assert data["image"] == "coffee.jpg" and data["mode"] == "classic" and data["prompt"] and "embedding" not in data


def test_two_images_sharing_a_caption_file_are_refused(dataset):
    shutil.copy(EXAMPLES / "cat.jpg", dataset / "cat.png")
    res = run_cli("predict", str(dataset), "--sidecar", "txt")
    assert res.returncode == 2 and "would share one caption file" in res.stderr and not list(dataset.glob("*.txt"))


def test_killed_run_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        shutil.copy(EXAMPLES / "cat.jpg", root / f"img{i:02d}.jpg")
    exe = shutil.which("unprompt", path=str(REPO / ".venv" / "bin")) or shutil.which("unprompt")
    proc = subprocess.Popen([exe, "predict", str(root), "--sidecar", "txt", "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 600  # model loading in a fresh process: slow on a busy machine
    while len(list(root.glob("*.txt"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in root.glob("*.txt"))
    assert 2 <= len(done) < 12 and not list(root.glob(".*.tmp"))  # whole files only, no half-written caption
    assert all((root / name).read_text().strip() for name in done)
    res = run_cli("predict", str(root), "--sidecar", "txt")
    assert res.returncode == 0 and f"{len(done)} image(s) already have a .txt caption" in res.stderr
    assert len(list(root.glob("*.txt"))) == 12 and len(res.stdout.splitlines()) == 12 - len(done)


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_flavours_must_be_a_whole_number_from_zero(value):
    res = run_cli("predict", str(EXAMPLES / "cat.jpg"), "--flavours", value)
    assert res.returncode == 2 and "--flavours" in res.stderr and "Traceback" not in res.stderr


def test_python_api_refuses_unknown_modes_and_bad_flavours_clearly(lite_interrogator):
    from retriever.errors import ProfileError

    with pytest.raises(ProfileError, match="unknown mode 'fancy': choose one of fast, classic, best, negative"):
        lite_interrogator.interrogate(EXAMPLES / "cat.jpg", mode="fancy")
    with pytest.raises(ProfileError, match="flavours must be a whole number"):
        lite_interrogator.interrogate(EXAMPLES / "cat.jpg", flavours=-2)


def test_classic_adds_the_flavours_asked_for_and_alternatives_are_distinct(lite_interrogator):
    images = [EXAMPLES / n for n in ("cat.jpg", "coffee.jpg", "rocket.jpg", "clock.jpg")]
    best = lite_interrogator.interrogate_batch(images, mode="classic", flavours=0)
    five = lite_interrogator.interrogate_batch(images, mode="classic", flavours=5)
    for b, r in zip(best, five):
        added = [p.strip() for p in r.prompt.split(",")][len(b.prompt.split(",")):]
        assert len(added) == 5, (b.prompt, r.prompt)
        parts = [frozenset(x.strip().lower() for x in p.split(",")) for p in [r.prompt, *r.alternatives]]
        assert len(set(parts)) == len(parts)  # no two alike
        assert not any(a < b or b < a for i, a in enumerate(parts) for b in parts[i + 1:])  # none a copy plus one
        assert len(r.alternatives) <= 5
    assert any(r.alternatives for r in five)  # (an image whose every other prompt is part of its answer has none)


def test_a_rerun_with_out_lists_every_image_the_skipped_ones_with_their_caption(dataset, lite_interrogator):
    import csv

    res = run_cli("predict", str(dataset / "cat.jpg"), str(dataset / "a" / "b" / "clock.jpg"), "--sidecar", "txt")
    assert res.returncode == 0, res.stderr
    (dataset / "cat.txt").write_text("=edited caption\n")  # the user's own edit is what the table shows
    out = dataset / "x.csv"
    res = run_cli("predict", str(dataset), "-r", "--sidecar", "txt", "--format", "csv", "--out", str(out))
    assert res.returncode == 0 and "--out lists them with that caption" in res.stderr, res.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert [os.path.relpath(r["image"], dataset) for r in rows] == ["a/b/clock.jpg", "a/b/rocket.jpg",
                                                                     "a/coffee.jpg", "cat.jpg"]
    by_name = {os.path.basename(r["image"]): r for r in rows}
    assert by_name["cat.jpg"]["prompt"] == "'=edited caption" and by_name["cat.jpg"]["source"] == "sidecar"
    assert by_name["clock.jpg"]["prompt"] == (dataset / "a" / "b" / "clock.txt").read_text().strip()
    assert by_name["rocket.jpg"]["source"] == "interrogation" and by_name["rocket.jpg"]["prompt"]
    res = run_cli("predict", str(dataset), "-r", "--sidecar", "txt", "--format", "tsv", "--out", str(out))
    assert res.returncode == 0 and len(out.read_text().splitlines()) == 4  # all captioned: read back, no model call
    (dataset / "cat.json").write_text("{broken")
    res = run_cli("predict", str(dataset / "cat.jpg"), "--sidecar", "json", "--format", "jsonl", "--out", str(out))
    assert res.returncode == 1 and "cat.json: cannot read the caption" in res.stderr and "Traceback" not in res.stderr
    assert "cannot read the caption" in json.loads(out.read_text())["error"]
