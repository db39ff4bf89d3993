"""Unexpected errors as incidents: the detail (exception, stack) goes to the log under a short
id, the caller gets only that id. Callers may be any team; a repr or a stack can show paths,
settings or another team's data."""

from __future__ import annotations

import logging
import secrets
from typing import Any


def incident_text(incident: str) -> str:
    """What a caller is told of an incident."""
    return (f"internal error (incident {incident}); the organisers can look it up in the "
            "server's log")


def report_incident(log: logging.Logger, what: str, error: BaseException | None = None,
                    **fields: Any) -> str:
    """Logs `what` with `error` (default: the exception being handled) and `fields` under a new
    incident id, a structured field `incident`; returns the text for the caller."""
    incident = secrets.token_hex(4)
    log.error(what, exc_info=error or True, extra={"incident": incident, **fields})
    return incident_text(incident)
