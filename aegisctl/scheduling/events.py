"""Log events of unattended runs: one line each on stderr (journald), with structured fields
that the JSON log format (`--log-format json`) carries as keys."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    logger.log(level, "%s", message, extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": " ".join(record.getMessage().splitlines()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v for k, v in fields.items() if k not in data})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual `aegisctl: LEVEL: message`, one line even when the message has several."""

    def __init__(self) -> None:
        super().__init__("aegisctl: %(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(super().format(record).splitlines())
