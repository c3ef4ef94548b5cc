"""JSON log lines, each carrying the request id of the call that caused it.

Request bodies are never logged: card numbers cross the payment service, and
a log line is the easiest place to leak one.
"""

import contextvars
import json
import logging
import re
import sys
import time
import uuid

from plumbing import tracing

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# A caller's request id travels on (log lines, gRPC metadata) only in this
# form: anything else could forge log fields or carry a secret.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def accepted_request_id(offered: str | None) -> str:
    """The caller's request id if it has the accepted form, else a new one."""
    return offered if offered and REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex

_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# One encoder for every line (json.dumps with default= builds one per call).
_ENCODER = json.JSONEncoder(default=str)


def _fields(record: logging.LogRecord) -> dict:
    """A line's fields after its message: the request id (the context's, or
    the record's own), the trace ids while a span is current, then the
    record's extras."""
    fields = {}
    request_id = request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    ids = tracing.current_ids()
    if ids:
        fields["trace_id"], fields["span_id"] = ids
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service
        # (second, its formatted text): lines come many to a second.
        self._second = (-1, "")

    def _time(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self._time(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


class TextFormatter(logging.Formatter):
    """One line for a human: time, level, service, logger, message, then the
    fields as key=value, request_id first (once, whether it came from the
    context or from the record's fields)."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        text = f"{self.formatTime(record)} {record.levelname} {self.service} {record.name}: {record.getMessage()}"
        text += "".join(f" {k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def formatter(service: str, fmt: str) -> logging.Formatter:
    """The formatter of LOG_FORMAT `fmt` (json or text) for `service`'s lines."""
    return JsonFormatter(service) if fmt == "json" else TextFormatter(service)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    # No line prints the caller's file, thread or process: don't look them up
    # for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
