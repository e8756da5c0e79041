"""The fly Machines API, as much of it as a cluster needs: list, create, start, wait, delete.

A client-side rate limiter keeps to the documented limits, and a 429 is waited out (Retry-After, else a
doubling back-off). Errors are `FlyError`, with the API's own message. What the requests look like and
where the facts come from: the package docstring and docs/fly.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.parse
from typing import Any, Mapping, Optional

from .._version import __version__
from ..errors import LucidityError

logger = logging.getLogger("lucidity.fly")

INTERNAL_API = "http://_api.internal:4280"
PUBLIC_API = "https://api.machines.dev"
#: Environment: the API base URL (overrides the choice above), the token, and fly's runtime variables.
API_VARIABLE = "FLY_API_HOSTNAME"
TOKEN_VARIABLE = "FLY_API_TOKEN"
APP_VARIABLE = "FLY_APP_NAME"
MACHINE_VARIABLE = "FLY_MACHINE_ID"
IMAGE_VARIABLE = "FLY_IMAGE_REF"
REGION_VARIABLE = "FLY_REGION"
CONTROL_VARIABLE = "LUCIDITY_ADDRESS"
SECRET_VARIABLE = "LUCIDITY_SECRET"  # the name security.load_secret reads

#: Longest wait request, in seconds. The reference gives 60 as the default and no maximum; flyctl's client
#: (fly-go's flaps, constant proxyTimeoutThreshold) clamps every wait to 1..60 s. Longer waits are repeated.
WAIT_REQUEST_SECONDS = 60
#: Seconds any other request may take.
REQUEST_TIMEOUT = 30.0
#: Extra seconds a wait request's socket allows beyond the wait itself.
HTTP_MARGIN = 10.0
#: How often a request answered 429 is tried again, and the back-off when 429 carries no Retry-After.
RATE_LIMITED_TRIES = 6
RATE_LIMITED_BACKOFF = 1.0
MAX_BACKOFF = 30.0
#: (requests per second, burst) per action and identifier, as "Working with the Machines API" states.
DEFAULT_LIMIT = (1.0, 3)
ACTION_LIMITS = {"get": (5.0, 10)}
#: Longest API error text kept in a message, in characters.
MAX_ERROR_TEXT = 300


class FlyError(LucidityError):
    """The Machines API refused, failed or could not be reached; or the app is not in a state to proceed.

    Attributes: ``status`` (the HTTP status, or None when no answer came) and ``request`` ("METHOD path").
    """

    status: Optional[int]
    request: Optional[str]

    def __init__(self, message: str = "", *, status: Optional[int] = None, request: Optional[str] = None,
                 **facts: Any) -> None:
        super().__init__(message, status=status, request=request, **facts)


class _RateLimiter:
    """Token buckets per (action, identifier), so a burst of creates keeps to the documented rates.

    A request that finds its bucket empty reserves the next token and waits once, until that known moment.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)

    def acquire(self, action: str, identifier: str) -> None:
        rate, burst = ACTION_LIMITS.get(action, DEFAULT_LIMIT)
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get((action, identifier), (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate) - 1.0
            self._buckets[(action, identifier)] = (tokens, now)
        if tokens < 0:
            time.sleep(-tokens / rate)


class MachinesAPI:
    """One fly app's machines through the Machines REST API, rate-limited, with errors as `FlyError`.

    Use `from_environment` unless every part is known.
    """

    def __init__(self, app: str, token: str, base_url: str) -> None:
        self.app = app
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._limiter = _RateLimiter()

    @classmethod
    def from_environment(cls, app: Optional[str] = None, token: Optional[str] = None, api: Optional[str] = None,
                         environ: Mapping[str, str] = os.environ) -> "MachinesAPI":
        """The app (else $FLY_APP_NAME), token (else $FLY_API_TOKEN) and base URL (else $FLY_API_HOSTNAME,
        else the internal URL on a fly machine, the public one elsewhere).

        Raises:
            ValueError: no app. FlyError: no token.
        """
        app = app or environ.get(APP_VARIABLE)
        if not app:
            raise ValueError(f"no fly app: pass --app (app=) or set ${APP_VARIABLE}")
        token = (token or environ.get(TOKEN_VARIABLE) or "").strip()
        if not token:
            raise FlyError(f"no fly API token: set ${TOKEN_VARIABLE} (for example to the output of "
                           f"`fly tokens deploy -a {app}`)")
        # $FLY_MACHINE_ID is set on every fly machine, and a machine is inside its organization's 6PN.
        base = api or environ.get(API_VARIABLE) or (INTERNAL_API if environ.get(MACHINE_VARIABLE) else PUBLIC_API)
        return cls(app, token, base)

    def list(self) -> list[dict[str, Any]]:
        machines = self._request("GET", "", "list", self.app)
        if not isinstance(machines, list):
            raise FlyError(f"fly Machines API: listing the machines of {self.app} gave no list", status=200)
        return machines

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._request("POST", "", "create", self.app, body=body)
        if not isinstance(machine, dict) or not machine.get("id"):
            raise FlyError(f"fly Machines API: creating {body.get('name')} gave no machine id", status=200)
        return machine

    def start(self, machine_id: str) -> None:
        self._request("POST", f"/{_quote(machine_id)}/start", "start", machine_id)

    def wait(self, machine_id: str, state: str, instance_id: Optional[str], seconds: int) -> bool:
        """Block in the API until the machine is in `state` (True) or `seconds` pass (False, HTTP 408).

        `instance_id` pins the machine version waited for; the API requires it for ``stopped``.
        """
        seconds = max(1, min(seconds, WAIT_REQUEST_SECONDS))
        query = {"state": state, "timeout": str(seconds)}
        if instance_id:
            query["instance_id"] = instance_id
        try:
            self._request("GET", f"/{_quote(machine_id)}/wait", "wait", machine_id, query=query,
                          timeout=seconds + HTTP_MARGIN)
        except FlyError as exc:
            if exc.status == 408:
                return False
            raise
        return True

    def destroy(self, machine_id: str) -> None:
        self._request("DELETE", f"/{_quote(machine_id)}", "delete", machine_id, query={"force": "true"})

    def _request(self, method: str, path: str, action: str, identifier: str, *,
                 query: Optional[dict[str, str]] = None, body: Optional[dict[str, Any]] = None,
                 timeout: float = REQUEST_TIMEOUT) -> Any:
        # Imported here: urllib.request (with http.client, email and ssl) would add some 20 ms to every
        # `lucidity` command, `lucidity node` included, since the CLI builds this module's subcommand.
        import urllib.error
        import urllib.request

        path = f"/v1/apps/{_quote(self.app)}/machines{path}"
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        what = f"{method} {path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                   "User-Agent": f"lucidity/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        backoff, attempt = RATE_LIMITED_BACKOFF, 1
        while True:
            self._limiter.acquire(action, identifier)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    text = response.read()
                return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError as exc:
                error_body = exc.read()
                if exc.code != 429 or attempt >= RATE_LIMITED_TRIES:
                    raise self._error(what, exc.code, error_body) from None
                delay = _retry_after(exc.headers.get("Retry-After"), backoff)
                logger.info("fly Machines API: %s rate-limited (429); trying again in %.1f s", what, delay)
                time.sleep(delay)  # the API named the moment: a known deadline, not a poll
                backoff, attempt = min(backoff * 2, MAX_BACKOFF), attempt + 1
            except urllib.error.URLError as exc:
                raise FlyError(f"cannot reach the fly Machines API at {self.base_url} ({what}): {exc.reason}; "
                               f"{_reach_hint(self.base_url)}", request=what) from exc
            except OSError as exc:  # a timeout or reset after connecting
                raise FlyError(f"the fly Machines API at {self.base_url} failed {what}: {exc}", request=what) from exc
            except ValueError as exc:
                raise FlyError(f"the fly Machines API answered {what} with something that is not JSON: {exc}",
                               request=what) from exc

    def _error(self, what: str, status: int, body: bytes) -> FlyError:
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            text = str(parsed.get("message") or parsed.get("error") or text)
        text = " ".join(text.split())[:MAX_ERROR_TEXT] or "(no message)"
        hint = ""
        if status in (401, 403):
            hint = f"; check ${TOKEN_VARIABLE}: it needs to be a token for app {self.app} (`fly tokens deploy`)"
        return FlyError(f"fly Machines API: {what} answered {status}: {text}{hint}", status=status, request=what)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _retry_after(value: Optional[str], fallback: float) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date), else `fallback`; at most MAX_BACKOFF."""
    if value:
        import email.utils

        try:
            return min(max(0.0, float(value)), MAX_BACKOFF)
        except ValueError:
            try:
                return min(max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()), MAX_BACKOFF)
            except (TypeError, ValueError):
                pass
    return fallback


def _reach_hint(base_url: str) -> str:
    if base_url == INTERNAL_API:
        return f"that address exists only inside fly's private network; elsewhere set ${API_VARIABLE}={PUBLIC_API}"
    return "check the network and the URL"


