"""W&B never costs a run: an unreachable server means offline in one line, found out quickly; a rejected key is a
user error before anything trains; a self-hosted server with credentials counts as configured."""
from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_DATA, main_in_process
from kd_lightning.utils import wandb_setup
from kd_lightning.utils.wandb_setup import api_key, credentials_configured

WANDB = ["--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.project=kd-tests"]


def teacher(run_dir: Path) -> list[str]:
    return ["fit", *TINY_DATA, "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
            "--model.memory_size=8", "--trainer.max_epochs=1", f"--trainer.default_root_dir={run_dir}",
            "--trainer.enable_model_summary=false", *WANDB]


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """W&B as a configured user has it: a key, no WANDB_MODE, no cached verdict."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    for name in ("WANDB_MODE", wandb_setup.VERDICT_ENV, "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as sock:  # a port the kernel just handed out and nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_means_offline_said_once_and_the_run_completes(online_env, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    online_env.setenv("WANDB_BASE_URL", url)
    code, out, err = main_in_process(teacher(tmp_path), capsys)
    assert code == 0, err
    said = [line for line in (out + err).splitlines() if "cannot be reached" in line]
    assert said == [f"kd-lightning: W&B server {url} cannot be reached (connection refused): this run logs to W&B "
                    f"offline in {tmp_path / 'wandb'}; upload it later with `wandb sync <its offline-run folder>` "
                    "(printed when the run ends)"]
    offline = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    end = [line for line in out.splitlines() if line.startswith("kd-lightning fit: complete")]
    assert len(end) == 1 and end[0].endswith(f"; W&B offline: wandb sync {offline[0]}"), out


def test_the_verdict_is_found_quickly_and_kept_for_the_processes_started_later(online_env, tmp_path):
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert wandb_setup.choose_mode(tmp_path) == "offline"
    assert time.monotonic() - started < wandb_setup.PROBE_TIMEOUT_S  # tol: a refused connection answers at once
    assert os.environ["WANDB_MODE"] == "offline"  # inherited by DDP ranks and anything this process starts
    assert os.environ[wandb_setup.VERDICT_ENV].endswith(" offline")


def test_a_server_that_does_not_answer_in_time_means_offline(online_env, tmp_path):
    listener = socket.socket()  # accepts connections (the backlog) but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        assert wandb_setup.probe(url, "key", timeout=0.5) == "no answer within 0.5 s"
        assert time.monotonic() - started < 3  # tol: the 0.5 s timeout plus a thread's start on a busy machine
    finally:
        listener.close()


class _Rejecting(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_rejected_key_is_one_line_before_anything_trains(online_env, tmp_path, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Rejecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    online_env.setenv("WANDB_BASE_URL", url)
    try:
        code, _, err = main_in_process(teacher(tmp_path), capsys)
    finally:
        server.shutdown()
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if "kd-lightning" in line] == [
        f"kd-lightning: error: the W&B server {url} rejected the API key from WANDB_API_KEY (HTTP 401): log in "
        f"again with `wandb login --relogin --host {url}` (or set WANDB_API_KEY), or train without uploading: "
        "WANDB_MODE=offline (sync later) or --trainer.logger=false"]
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_self_hosted_server_with_a_netrc_entry_counts_as_configured(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.lab.example\n  login user\n  password local-key\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.lab.example:8443")
    assert api_key() == ("local-key", str(netrc)) and credentials_configured()
    monkeypatch.setenv("WANDB_BASE_URL", "https://other.example")
    assert api_key() == (None, "") and not credentials_configured()
    monkeypatch.setenv("WANDB_API_KEY", "env-key")
    assert api_key() == ("env-key", "WANDB_API_KEY")
