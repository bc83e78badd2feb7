"""W&B for a run: online only when the server answers, offline otherwise, and the same W&B run across resumes.

- Configured: an API key for the server in use, i.e. `WANDB_API_KEY`, or a `~/.netrc` (`$NETRC`) entry for the host
  of `WANDB_BASE_URL` (default https://api.wandb.ai; `wandb login --host URL` writes that entry for a self-hosted
  server). Not configured: the run logs offline, silently.
- Configured: one short request (PROBE_TIMEOUT_S) asks the server who the key belongs to, before the run starts.
  No answer (no network, server down, closed port): the run logs offline and one line says so; wandb's own
  timeout (minutes) is never waited for. The server rejects the key (HTTP 401/403): a user error, before training.
  The verdict is kept in VERDICT_ENV, so that the processes this one starts (DDP ranks) do not ask again.
- The W&B run id is kept in `<run folder>/RUN_ID_FILE`: a resumed fit logs to the same W&B run (wandb's
  resume="allow", Lightning's default) online and offline alike.
"""
from __future__ import annotations

import base64
import json
import netrc
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from kd_lightning.exceptions import WandbCredentialsError

DEFAULT_BASE_URL = "https://api.wandb.ai"
RUN_ID_FILE = "wandb_run_id.txt"
VERDICT_ENV = "KD_LIGHTNING_WANDB_VERDICT"
#: Long enough for a server across the world, short enough not to matter before a run.
PROBE_TIMEOUT_S = 5.0
OFFLINE_MODES = ("offline", "dryrun")


def base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def api_key(url: Optional[str] = None) -> tuple[Optional[str], str]:
    """The API key for the server at `url` and where it came from ("WANDB_API_KEY" or the netrc file)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"], "WANDB_API_KEY"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    host = urlparse(url or base_url()).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None, ""
    return (entry[2], str(path)) if entry and entry[2] else (None, "")


def credentials_configured() -> bool:
    """True when W&B could upload: an API key for the server in use (see the module docstring)."""
    return api_key()[0] is not None


def probe(url: str, key: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[int | str]:
    """Ask the server at `url` who `key` belongs to. Returns the HTTP status it answered with (an int), or why it
    could not be asked (a str), within `timeout` seconds whatever happens (a name lookup included)."""
    token = base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(), method="POST",
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    no_answer = f"no answer within {timeout:g} s"
    answer: list[Optional[int | str]] = [no_answer]

    def ask() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer[0] = response.status
        except urllib.error.HTTPError as err:
            answer[0] = err.code
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
            answer[0] = no_answer if timed_out else str(getattr(reason, "strerror", None) or reason).lower()

    thread = threading.Thread(target=ask, daemon=True)  # a name lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return answer[0]


def choose_mode(run_dir: Path) -> str:
    """Set WANDB_MODE for this process before its W&B run starts; returns "online", "offline" or "disabled".

    Prints one line when a configured server cannot be reached; raises WandbCredentialsError when it rejects
    the key."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in OFFLINE_MODES or mode == "disabled":
        return "disabled" if mode == "disabled" else "offline"
    url = base_url()
    key, source = api_key(url)
    if key is None:
        os.environ["WANDB_MODE"] = "offline"
        return "offline"
    cached = os.environ.get(VERDICT_ENV, "")
    if cached == f"{url} online":
        return "online"
    status = probe(url, key)
    if status in (401, 403):
        raise WandbCredentialsError(
            f"the W&B server {url} rejected the API key from {source} (HTTP {status}): log in again with `wandb "
            f"login --relogin{'' if url == DEFAULT_BASE_URL else ' --host ' + url}` (or set WANDB_API_KEY), or "
            "train without uploading: WANDB_MODE=offline (sync later) or --trainer.logger=false"
        )
    if isinstance(status, int) and status < 500:
        os.environ[VERDICT_ENV] = f"{url} online"
        return "online"
    why = f"HTTP {status}" if isinstance(status, int) else status
    os.environ["WANDB_MODE"] = "offline"
    os.environ[VERDICT_ENV] = f"{url} offline"
    sys.stderr.write(f"kd-lightning: W&B server {url} cannot be reached ({why}): this run logs to W&B offline in "
                     f"{Path(run_dir) / 'wandb'}; upload it later with `wandb sync <its offline-run folder>` "
                     "(printed when the run ends)\n")
    sys.stderr.flush()
    return "offline"


def run_id(run_dir: Path, resume: bool, given: Optional[str] = None) -> str:
    """The W&B run id of the run in `run_dir`: the one kept there when resuming, else `given` (the logger's `id`
    or WANDB_RUN_ID) or a new one; kept in RUN_ID_FILE (call on the main process only)."""
    path = Path(run_dir) / RUN_ID_FILE
    kept = path.read_text().strip() if resume and path.is_file() else ""
    chosen = given or kept or secrets.token_hex(4)  # 8 characters of [0-9a-f], as wandb's own ids
    if chosen != kept:
        from kd_lightning.utils.atomic import atomic_write_text

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, chosen + "\n")
    return chosen


def sync_command(save_dir: Path) -> str:
    """`wandb sync <newest offline run in save_dir/wandb>`, or "" when there is none."""
    from kd_lightning.utils.wandb_hint import offline_runs, short_path

    runs = offline_runs(save_dir)
    return f"wandb sync {short_path(runs[-1])}" if runs else ""

