"""Fetching a file from a URL without ever hanging: torch.hub's download in a daemon
thread, given up after a timeout (a backbone's ImageNet weights use it)."""
from __future__ import annotations

import os


def download_with_timeout(url, path, timeout_s: float) -> str | None:
    """torch.hub's download in a daemon thread, given up after `timeout_s` (torch.hub
    has no timeout of its own). Returns why it failed, or None."""
    import threading

    import torch

    outcome = {}

    def fetch():
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=False)  # writes a temp file, then moves
        except Exception as failure:  # noqa: BLE001 - any failure means: tell the user where to put it
            text = str(failure)
            outcome["error"] = f"download failed: {text.splitlines()[0] if text else type(failure).__name__}"

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"download timed out after {timeout_s} s"
    return outcome.get("error")
