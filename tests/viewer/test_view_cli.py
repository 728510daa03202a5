"""`exaslide view` as a separate process, the way a user runs it: the printed URL serves,
Ctrl-C stops it cleanly, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import urllib.request


def test_view_prints_its_url_serves_and_stops_on_ctrl_c(synth_slide):
    process = subprocess.Popen([sys.executable, "-m", "exaslide", "view", str(synth_slide.path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)  # never hang the suite
        assert ready, "exaslide view printed no URL in 60 s"
        line = process.stdout.readline()  # printed once the socket is bound
        assert line.startswith("exaslide viewer: http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(f"{url}api/slides", timeout=30) as response:
            slides = json.loads(response.read())
        assert [(s["id"], s["width"], s["height"]) for s in slides] == [("slide", 3072, 2304)]
        with urllib.request.urlopen(f"{url}slides/slide.dzi", timeout=30) as response:
            assert b'TileSize="254" Overlap="1"' in response.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) in (0, 130)
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_view_bad_input_is_one_line_with_exit_code_2(tmp_path, synth_slide, cli):
    (tmp_path / "notes.txt").write_text("not a slide")
    assert "not a slide" in cli.one_line_error(cli.run("view", tmp_path / "notes.txt"))
    assert "no such file" in cli.one_line_error(cli.run("view", tmp_path / "missing.svs"))
    assert "--token" in cli.one_line_error(cli.run("view", synth_slide.path, "--host", "0.0.0.0"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "in use" in cli.one_line_error(
            cli.run("view", synth_slide.path, "--port", port, timeout=60))


