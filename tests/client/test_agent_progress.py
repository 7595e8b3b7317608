"""Progress for people at a terminal: `orfeas agent submit --wait` on a TTY vs piped, and AgentClient.wait's
progress callback, against the live in-process API."""

from __future__ import annotations

import io
import itertools
import json
import os
import pty
from pathlib import Path

from serve_app.agent_cli import progress_text
from serve_app.cli import main
from tests.serve_app.conftest import png_bytes

from .conftest import LiveApi


def _submit_wait(api: LiveApi, tmp_path: Path) -> int:
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes())
    argv = ["agent", "submit", str(image), "--wait", "--out", str(tmp_path / "out"), "--key-file", str(api.key_file)]
    return main(argv)


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_agent_submit_wait_on_a_tty_shows_one_progress_line_per_job(live_api, tmp_path, capsys, monkeypatch):
    master, slave = pty.openpty()
    terminal = open(slave, "w", encoding="utf-8")  # closed below, before reading the master
    monkeypatch.setattr("sys.stderr", terminal)
    try:
        status = _submit_wait(live_api, tmp_path)
    finally:
        terminal.close()
    shown = _read_all(master)
    os.close(master)
    assert status == 0
    results = json.loads(capsys.readouterr().out)  # stdout is still exactly the JSON
    job_id = results[0]["job"]["job_id"]
    assert f"\r\x1b[K{job_id[:8]}… succeeded done 100%" in shown
    assert shown.count("\n") == 1 and shown.endswith("\n")  # one line, rewritten in place, ended once


def test_agent_submit_wait_piped_prints_only_json(live_api, tmp_path, capsys):
    assert _submit_wait(live_api, tmp_path) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out)[0]["job"]["status"] == "succeeded"


def test_client_wait_calls_on_progress_for_each_change(live_api, tmp_path):
    views: list[dict] = []
    with live_api.client() as client:
        job = client.submit(png_bytes(), seed=1)
        final = client.wait(job["job_id"], timeout=120, on_progress=views.append)
    assert final["status"] == "succeeded"
    assert views[-1] == final
    states = [(view["status"], view["stage"], view["progress"]) for view in views]
    assert all(a != b for a, b in itertools.pairwise(states))  # only changes are reported
    assert all(view["job_id"] == job["job_id"] for view in views)


def test_progress_text_names_the_job_stage_and_percent():
    job = {"job_id": "job_ab12cd34ef56", "status": "running", "stage": "generating", "progress": 40}
    assert progress_text(job) == "job_ab12… running generating 40%"
    assert progress_text({**job, "status": "queued", "stage": "queued", "progress": 0}) == "job_ab12… queued 0%"


def test_status_line_is_silent_when_not_a_tty():
    from deployments.terminal import StatusLine

    stream = io.StringIO()
    line = StatusLine(stream)
    line.update("job_ab12… running")
    line.finish("job_ab12… succeeded")
    assert not line.enabled and stream.getvalue() == ""
