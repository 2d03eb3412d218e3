"""`unprompt doctor` on the lite set-up: every check a line, exit 0; a missing index is a fail with its fix."""

import socket

from conftest import run_cli


def test_doctor_on_lite_can_serve(lite_interrogator):
    with socket.socket() as taken:  # a port in use is a warning with a fix, not a failure
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("doctor", "--profile", "lite", "--port", str(port))
    assert res.returncode == 0, res.stdout + res.stderr
    names = [line[6:].split(":", 1)[0] for line in res.stdout.splitlines() if line[:4] in ("ok  ", "warn", "fail")]
    assert names == ["profile", "weights retrieval", "weights metric", "index components-lite", "head", "gpu", "ram",
                     "disk", "threads", "port", "packages"]
    assert "\nok    gpu: " in res.stdout  # no GPU is a line, not a failure
    assert f"warn  port: 127.0.0.1:{port} is taken" in res.stdout and "fix: " in res.stdout
    assert "can serve: 0 failed" in res.stderr


def test_doctor_without_the_index_cannot_serve(home):
    (home / "indexes" / "components-lite").unlink()  # the private home's link to the session index
    res = run_cli("doctor", "--profile", "lite")
    assert res.returncode == 1
    assert "fail  index components-lite: no index at" in res.stdout and "fix: unprompt setup --profile lite" in res.stdout
