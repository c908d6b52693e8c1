"""One JSON POST with retries, for the model endpoints aegisctl calls over HTTP (the embedding
provider's `/embeddings`, the rerank step's `/rerank`), with the standard library only.

What differs between callers — their name in messages, the hint for a refused key or an
unreachable endpoint, how long a retry may wait — is passed in; the protocol (retry on a time-out,
408/409/429 and 5xx, honour Retry-After, backoff with jitter otherwise, never retry a refused
key, one-line errors with the server's own message) is here once.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aegisctl.errors import AegisError, OperationFailed, RemoteUnavailable

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Endpoint:
    url: str
    what: str  # "embedding endpoint", "rerank endpoint": names it in every message
    unreachable_hint: str
    # (HTTP status 401 or 403, the server's message) -> the error to raise, with its hint
    auth_error: Callable[[int, str], AegisError]
    api_key: str | None = None
    timeout: float = 30.0
    retries: int = 2
    max_retry_wait: float = 30.0


def post_json(endpoint: Endpoint, body: dict[str, Any]) -> Any:
    """The endpoint's JSON answer to `body`, retried as the module docstring says."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "aegisctl"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    for attempt in range(endpoint.retries + 1):
        request = urllib.request.Request(endpoint.url, data=data, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            if exc.code in (401, 403):
                raise endpoint.auth_error(exc.code, detail) from None
            if exc.code not in RETRY_STATUSES or attempt >= endpoint.retries:
                raise OperationFailed(
                    f"{endpoint.what} {endpoint.url} answered HTTP {exc.code}"
                    + (f": {detail}" if detail else "")) from None
            wait = _wait(endpoint, attempt, exc.headers.get("Retry-After"))
            log.info("%s answered HTTP %s; retrying in %.1fs", endpoint.what, exc.code, wait)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            timed_out = isinstance(reason, TimeoutError)
            # A refused connection will be refused again a second later: only time-outs retry.
            if not timed_out or attempt >= endpoint.retries:
                raise RemoteUnavailable(
                    f"cannot reach the {endpoint.what} {endpoint.url}: "
                    + ("timed out" if timed_out else str(reason)),
                    hint=endpoint.unreachable_hint) from None
            wait = _wait(endpoint, attempt, None)
            log.info("%s timed out; retrying in %.1fs", endpoint.what, wait)
        except json.JSONDecodeError:
            raise OperationFailed(f"{endpoint.what} {endpoint.url} did not answer JSON") from None
        time.sleep(wait)
    raise AssertionError("unreachable")


def _wait(endpoint: Endpoint, attempt: int, retry_after: str | None) -> float:
    """Retry-After when the server says (seconds or an HTTP date), else backoff + jitter."""
    if retry_after:
        seconds = _parse_retry_after(retry_after)
        if seconds is not None:
            return min(endpoint.max_retry_wait, max(0.0, seconds))
    backoff: float = random.uniform(0.5, 1.0) * 0.5 * 2.0**attempt
    return min(endpoint.max_retry_wait, backoff)


def _parse_retry_after(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return float(when.timestamp() - time.time())


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own one-line message ({"error": {"message"}} or {"error": "..."})."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message).splitlines()[0][:200] if message else ""
