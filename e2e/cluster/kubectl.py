"""A small kubectl wrapper and deadline polling, shared by the harness and the fixtures."""

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from e2e.cluster.api_reader import ApiReader

T = TypeVar("T")


class Kubectl:
    """Run kubectl against one kubeconfig, always with a timeout.

    `kubectl("get", "pods")` returns the CompletedProcess (text, captured, check=True);
    `kubectl.json("get", "pods")` adds `-o json` and returns the parsed object;
    `kubectl.api` makes reads and polls without a process (api_reader.ApiReader): use it for GETs.
    """

    def __init__(self, kubeconfig: Path | str, binary: str = "kubectl", timeout: float = 30) -> None:
        self.kubeconfig = str(kubeconfig)
        self.binary = binary
        self.timeout = timeout
        self._api: tuple[tuple[int, int, int], ApiReader] | None = None
        self._api_lock = threading.Lock()

    @property
    def api(self) -> ApiReader:
        """A reader on this kubeconfig, made again when the file changes (a cluster brought up
        again has new certificates: a reader on the old ones would fail every request)."""
        info = os.stat(self.kubeconfig)
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._api_lock:
            if self._api is None or self._api[0] != key:
                if self._api is not None:
                    self._api[1].close()
                self._api = (key, ApiReader.from_kubeconfig(self.kubeconfig, self.argv(), self.timeout))
            return self._api[1]

    def close(self) -> None:
        """Close the API reader's connection (a later `api` opens a new one)."""
        with self._api_lock:
            if self._api is not None:
                self._api[1].close()
                self._api = None

    def argv(self, *args: str) -> list[str]:
        return [self.binary, f"--kubeconfig={self.kubeconfig}", *args]

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.argv(*args), input=input, text=True, capture_output=True, timeout=timeout or self.timeout
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc)
        return proc

    def json(self, *args: str, timeout: float | None = None) -> dict:
        return json.loads(self(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, *objects: dict, namespace: str | None = None) -> subprocess.CompletedProcess:
        """`kubectl apply -f -` with the objects as one List."""
        args = ["apply", "-f", "-"] + ([f"--namespace={namespace}"] if namespace else [])
        doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        return self(*args, input=json.dumps(doc))

    def create_namespace(self, name: str, timeout: float = 30) -> None:
        """Create it and wait for its default ServiceAccount: until the controller manager has
        made that, a Pod created there is refused ("serviceaccount default not found")."""
        self("create", "namespace", name)
        wait_for(f"ServiceAccount default in {name}", lambda: self.api.exists("serviceaccount", "default", name), timeout)


class KubectlError(RuntimeError):
    def __init__(self, args: tuple[str, ...], proc: subprocess.CompletedProcess) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        self.proc = proc


PROGRAMMING_ERRORS = (KeyError, AttributeError, TypeError, NameError, ImportError, AssertionError)
"""Raised by a probe, these are bugs in the probe, not "not ready yet": they fail at once."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call `probe` until it returns something truthy (returned) or `timeout` seconds pass.

    Other exceptions from the probe count as "not yet"; the TimeoutError names what it
    waited for and the last value or exception it saw (chained), so a failed wait says why.
    A probe's programming error (PROGRAMMING_ERRORS, e.g. a KeyError from a missing field)
    propagates at once instead of turning into a timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except PROGRAMMING_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure means "not ready yet"
            last = exc
        if time.monotonic() >= deadline:
            cause = last if isinstance(last, BaseException) else None
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}") from cause
        time.sleep(interval)
