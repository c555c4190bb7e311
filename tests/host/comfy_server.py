"""Launch the real ComfyUI server (built by scripts/setup.sh) and talk HTTP to it.

Tests never import `comfy` themselves: they send API-format prompts to a real
server process, exactly as a user's ComfyUI would run our nodes.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_DIR = Path(os.environ.get("ADL_COMFY_DIR", REPO_ROOT / ".host" / "ComfyUI"))
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
LOOPBACK = "127.0.0.1"  # the only address this harness ever talks to


class ComfyError(RuntimeError):
    """The server refused or failed something; `.payload` is its JSON (if any)."""

    def __init__(self, message: str, payload: dict | None = None):
        super().__init__(message)
        self.payload = payload or {}


class PromptRejected(ComfyError):
    """POST /prompt failed validation; `.node_errors` maps node id -> errors."""

    @property
    def node_errors(self) -> dict:
        return self.payload.get("node_errors", {})


@dataclass
class Result:
    prompt_id: str
    status: dict                     # history "status": status_str, completed, messages
    outputs: dict = field(default_factory=dict)  # node id -> {"images": [...], ...}

    @property
    def ok(self) -> bool:
        return self.status.get("status_str") == "success"

    @property
    def execution_error(self) -> dict | None:
        """The `execution_error` message (exception_type, exception_message, node_type...)."""
        for name, data in self.status.get("messages", []):
            if name == "execution_error":
                return data
        return None

    def raise_for_error(self) -> "Result":
        if not self.ok:
            err = self.execution_error or {}
            raise ComfyError(
                f"prompt {self.prompt_id} failed in {err.get('node_type')} "
                f"(node {err.get('node_id')}): {err.get('exception_type')}: "
                f"{err.get('exception_message')}", err)
        return self


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: Path, port: int, log_path: Path, proc: subprocess.Popen):
        self.base_dir, self.port, self.log_path, self.proc = base_dir, port, log_path, proc
        self.url = f"http://{LOOPBACK}:{port}"
        self.client_id = uuid.uuid4().hex

    # --- lifecycle ---------------------------------------------------------
    @classmethod
    def start(cls, base_dir: Path | str, port: int | None = None,
              timeout: float = 120.0, extra_args: list[str] = (), extra_env: dict | None = None) -> "ComfyServer":
        base_dir = Path(base_dir)
        port = port or free_port()
        if not (HOST_DIR / "main.py").is_file():
            raise ComfyError(f"no ComfyUI at {HOST_DIR}: run `bash scripts/setup.sh` first")
        python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
        (base_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)  # main.py needs it
        log_path = base_dir / f"comfyui-{port}.log"
        cmd = [str(python), "main.py", "--cpu", "--listen", LOOPBACK, "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base_dir),
               # in memory: the default DB file lives beside the shared host copy
               "--database-url", "sqlite:///:memory:", *extra_args]
        # No network here: a node that tries the Hugging Face hub fails at
        # once instead of hanging on retries.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=HOST_DIR, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        server = cls(base_dir, port, log_path, proc)
        server._wait_ready(timeout)
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise ComfyError(f"ComfyUI not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # --- HTTP API -----------------------------------------------------------
    def _get(self, path: str, timeout: float = 30.0) -> dict:
        r = requests.get(self.url + path, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def _post(self, path: str, body: dict, timeout: float = 30.0) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=timeout)

    def system_stats(self) -> dict:
        return self._get("/system_stats")

    def object_info(self, node_type: str | None = None) -> dict:
        return self._get("/object_info" + (f"/{node_type}" if node_type else ""), timeout=120)

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        """POST /prompt; returns the prompt id or raises PromptRejected with the server's JSON.

        `extra_data` is what the frontend sends beside the prompt, e.g. {"extra_pnginfo": {"workflow": ...}}."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data is not None:
            body["extra_data"] = extra_data
        r = self._post("/prompt", body)
        try:
            payload = r.json()
        except ValueError:
            payload = {"error": r.text}
        if r.status_code != 200 or "prompt_id" not in payload:
            err = payload.get("error", {})
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise PromptRejected(f"prompt rejected ({r.status_code}): {msg}; "
                                 f"node_errors={payload.get('node_errors')}", payload)
        return payload["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> Result:
        """Poll /history/{id} until the prompt finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # ComfyUI writes the history entry only once the prompt is done.
            entry = self._get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status"):
                return Result(prompt_id, entry["status"], entry.get("outputs", {}))
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(poll)
        try:  # don't leave it running into the next test
            self.interrupt()
        except requests.RequestException:
            pass
        raise ComfyError(f"prompt {prompt_id} not done after {timeout:.0f}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300.0, extra_data: dict | None = None) -> Result:
        return self.wait(self.queue(prompt, extra_data), timeout)

    def free(self) -> None:
        """Unload models and free memory between tests that load weights."""
        self._post("/free", {"unload_models": True, "free_memory": True}).raise_for_status()

    def interrupt(self) -> None:
        self._post("/interrupt", {}).raise_for_status()
