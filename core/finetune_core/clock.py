"""The one timestamp format of the project: RFC 3339 in UTC with a `Z`, seconds precision
(2026-01-31T12:00:00Z), as Kubernetes writes its own timestamps."""

from __future__ import annotations

from datetime import UTC, datetime


def timestamp(moment: datetime | None = None) -> str:
    """`moment` (default: now) as RFC 3339 UTC."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
