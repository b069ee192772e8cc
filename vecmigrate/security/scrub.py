"""The second line of defence: redact credentials from text bound for logs and error messages.

The first line is that specs and configuration hold references, not secrets. Should a secret
still reach a message (a driver quoting its connection string, a URL someone typed), the
scrubber removes what it can recognise: passwords in URLs and DSNs, ``password=`` and ``token=``
parameters, bearer and API-key headers, and every value this process resolved from a secret
reference. :func:`install` puts it on the root logger's handlers (and on the ``vecmigrate`` and
``temporalio`` loggers), so records are scrubbed whoever logs them.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "***"

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)@")
# password=..., token: ..., api_key="..." in DSNs, query strings, JSON and repr() output
_PARAMETER = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|sslpassword|token|api[_-]?key|apikey|secret|"
    r"private[_-]?key)\b['\"]?\s*[:=]\s*['\"]?)(?P<secret>[^\s'\"&,;)}\]]+)",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(
    r"(?P<head>\b(?:bearer|basic)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE
)

_known: set[str] = set()
_known_lock = threading.Lock()
# Values this short would redact ordinary words; a secret manager's values are longer.
MIN_REMEMBERED = 6


def remember_secret(value: str) -> None:
    """Redact ``value`` from everything scrubbed in this process from now on."""
    if len(value) >= MIN_REMEMBERED:
        with _known_lock:
            _known.add(value)


def scrub(text: str) -> str:
    """``text`` with every credential the scrubber recognises replaced by ``***``."""
    if not text:
        return text
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED + "@", text)
    text = _PARAMETER.sub(lambda m: m["head"] + REDACTED, text)
    return _AUTHORIZATION.sub(lambda m: m["head"] + REDACTED, text)


def scrub_value(value: Any) -> Any:
    """Scrub the strings inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    return value


class ScrubbingFilter(logging.Filter):
    """A logging filter that renders each record's message and traceback, scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: leave it
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_installed = ScrubbingFilter()


def install(logger: logging.Logger | None = None) -> None:
    """Scrub every record that reaches the handlers of ``logger`` (the root by default) and
    those logged through the ``vecmigrate`` and ``temporalio`` loggers. Idempotent."""
    targets = [logger or logging.getLogger()]
    targets += [logging.getLogger("vecmigrate"), logging.getLogger("temporalio")]
    for target in targets:
        if _installed not in target.filters:
            target.addFilter(_installed)
        for handler in target.handlers:
            if _installed not in handler.filters:
                handler.addFilter(_installed)
