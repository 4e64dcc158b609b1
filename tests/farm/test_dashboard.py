"""`autoresearch-farm dashboard` as a user runs it: a real farm run in a process of its own (local Ray,
embedded Redis, two CPU workers, the scripted training command on a landscape where the offline
search finds real wins) and the dashboard beside it, opened in a real headless Chromium whose DOM is
read while the run goes on.

Set AUTORESEARCH_FARM_SCREENSHOTS=DIR to keep the three pages' screenshots (docs/img/ holds them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.browser import Browser, chromium_path
from tests.farmkit import FIXTURES, SCRIPTED_CONFIG, free_port, http_get, make_repo, set_constants

pytestmark = pytest.mark.slow

# no seed noise and wins of 0.005+ bpb: the mutate proposer's BONUS steps merge within seconds
LANDSCAPE = {"NOISE": "0.0", "JITTER": "0.00001", "BONUS": "0.01", "SLEEP": "1.0"}
EXPERIMENTS = 24


def cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, text=True, **kw)


def cli_run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def start_dashboard(*args: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    """The dashboard process and the URL it printed (its first line)."""
    p = cli("dashboard", *args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = p.stdout.readline()
    assert "dashboard of run" in line, line + p.stdout.read()
    return p, line.split(": ", 1)[1].split(" ")[0]


def stop(p: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    repo = make_repo(tmp / "target", set_constants((FIXTURES / "scripted_train.py").read_text(), LANDSCAPE))
    cfg = tmp / "farm.toml"
    cfg.write_text(SCRIPTED_CONFIG.replace("[workers]\n", "[workers]\nheartbeat_seconds = 1.0\n"))  # (runs of 1 s)
    log = (tmp / "run.log").open("w")
    run = cli("run", "--config", str(cfg), "--tag", "W", "--max-experiments", str(EXPERIMENTS), "--no-dashboard",
              cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    dash = None
    try:
        deadline = time.monotonic() + 120
        # the run is recorded (its baseline has a result)
        while "c0001 [baseline]" not in (tmp / "run.log").read_text():
            assert run.poll() is None and time.monotonic() < deadline, (tmp / "run.log").read_text()
            time.sleep(0.5)
        dash, url = start_dashboard("--config", str(cfg), "--tag", "W", "--port", str(free_port()), cwd=repo)
        yield SimpleNamespace(repo=repo, cfg=str(cfg), run=run, url=url, log=tmp / "run.log")
    finally:
        stop(run)
        if dash is not None:
            stop(dash)
        log.close()


def test_the_dashboard_follows_a_run_live_in_a_real_browser(live):
    if chromium_path() is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no Chromium for the dashboard's browser test: `apt-get install chromium` (.ci/run does)")
    shots = os.environ.get("AUTORESEARCH_FARM_SCREENSHOTS")
    with Browser() as b:
        b.goto(live.url.rstrip("/") + "/workers")  # while the run goes on: both workers, a run's progress bar
        b.wait_for("document.querySelectorAll('#workers tbody tr').length == 2 && "
                   "/c\\d{4} \\w+: [^\\n]*\\t\\s*\\d+% · \\d+ s of 1 s budget/.test(document.querySelector('#workers').innerText)",
                   timeout=120)
        if shots:
            b.screenshot(Path(shots) / "dashboard-workers.png", width=1280, height=700, full_page=True)
        b.goto(live.url)
        opened = b.navigations
        first = int(b.text("#n-experiments"))
        assert first < EXPERIMENTS, "the page opened while the run goes on"
        b.wait_for(f"+document.querySelector('#n-experiments').textContent > {first}", timeout=120)
        b.wait_for("document.querySelectorAll('#lineage tbody tr').length >= 1", timeout=120)
        assert b.navigations == opened, "the count grew and the merge appeared without a reload"
        cand = b.eval("document.querySelector('#lineage tbody tr a').textContent")
        change = b.eval("document.querySelectorAll('#lineage tbody tr td')[3].textContent")
        hover = b.eval(f"document.querySelector('#progress-chart a[data-cand=\"{cand}\"][data-status=\"keep\"] title')"
                       ".textContent")
        assert hover.startswith(f"{cand} keep ") and change.startswith(hover.split(": ", 1)[1]), (hover, change)
        b.wait_for("document.querySelector('#run-status').textContent === 'done'", timeout=240)  # the run ended
        n = int(b.text("#n-experiments"))
        if shots:
            b.screenshot(Path(shots) / "dashboard-run.png", width=1280, height=900, full_page=True)
        assert b.navigations == opened
        assert not [m for m in b.console if m.get("type") in ("error", "exception")], b.console

        # what the page shows is what `results` says: the same records
        tsv = cli_run("results", "--config", live.cfg, "--tag", "W", cwd=live.repo)
        rows = [ln.split("\t") for ln in tsv.stdout.splitlines()[1:]]
        assert n == len(rows) - 1, tsv.stdout  # (the baseline's row is no experiment)
        status = json.loads(cli_run("status", "--config", live.cfg, "--tag", "W", "--json", cwd=live.repo).stdout)
        assert status["experiments_measured"] - 1 <= n <= EXPERIMENTS  # (not counted: the stale, never measured)
        kept = [r for r in rows[1:] if r[3] == "keep"]
        assert int(b.text("#n-merged")) == len(kept) >= 1

        b.goto(live.url.rstrip("/") + f"/c/{cand}")  # one URL per candidate: a link to share
        assert "+BONUS = " in b.text("#diff-text") and "-BONUS = " in b.text("#diff-text")
        decision = b.text("#decision")
        assert decision.startswith("merge:") and "confirmed" in decision, decision
        assert b.eval("document.querySelectorAll('#measurements tbody tr').length") >= 2, "measured, then confirmed"
        if shots:
            b.screenshot(Path(shots) / "dashboard-candidate.png", width=1280, height=900, full_page=True)
        b.goto(live.url.rstrip("/") + "/c/c9999")
        assert "no candidate 'c9999' in run W" in b.text("#message")


def test_bad_input_is_a_clear_error_not_a_traceback(live):
    bad = cli_run("dashboard", "--config", live.cfg, "--tag", "nope", cwd=live.repo)
    assert bad.returncode == 2 and "no run 'nope' (runs in this store: W)" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    gone = cli_run("dashboard", "--address", f"http://127.0.0.1:{free_port()}", cwd=live.repo)
    assert gone.returncode == 2 and "cannot reach the Ray Jobs API" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr + gone.stdout
    wrong = cli_run("dashboard", "--config", live.cfg, "--tag", "W", "--candidate", "c0001", cwd=live.repo)
    assert wrong.returncode == 2 and "--snapshot" in wrong.stderr


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_the_server_binds_only_where_it_was_told(live):
    port = int(live.url.rsplit(":", 1)[1].strip("/"))
    assert _reachable("127.0.0.1", port) and not _reachable("127.0.0.2", port), "the default is 127.0.0.1 alone"
    wide, url = start_dashboard("--config", live.cfg, "--tag", "W", "--host", "0.0.0.0", "--port", str(free_port()),
                                cwd=live.repo)
    try:
        assert "?token=" in url, url
        other = url.replace("0.0.0.0", "127.0.0.2")
        bare = other.split("?")[0]
        code, body = http_get(bare)
        assert code == 401 and "token" in body
        assert http_get(bare + "?token=wrong")[0] == 401
        code, body = http_get(other)
        assert code == 200 and "<section id=\"lineage\">" in body
        stop(wide, signal.SIGTERM)
        assert wide.returncode == 0, "SIGTERM stops it as Ctrl-C does, closing what it opened"
    finally:
        stop(wide)
