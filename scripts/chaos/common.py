"""Small helpers shared by the campaign modules."""

import os
import signal
import subprocess
import sys
import time


class CampaignError(Exception):
    """The cluster or the campaign's own machinery did not reach an expected state."""


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise CampaignError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def wait_until(condition, timeout, what, interval=0.1):
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise CampaignError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path, lines=30):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 32 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def terminate(process, timeout=20):
    """SIGTERM (after SIGCONT, in case it is frozen), SIGKILL if it is still there after `timeout`."""
    if process is None or process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        pass
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kubeconfig(server, token, namespace):
    """A kubeconfig (JSON is YAML) whose user and context are both `kind-kind`, Patroni's default
    `kubernetes.context`, pointing at `server` with bearer token `token`."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "kind-kind",
        "clusters": [{"name": "kind-kind", "cluster": {"server": server}}],
        "users": [{"name": "kind-kind", "user": {"token": token}}],
        "contexts": [{"name": "kind-kind", "context": {"cluster": "kind-kind", "user": "kind-kind",
                                                       "namespace": namespace}}],
    }


def die(message):
    print(f"chaos: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
