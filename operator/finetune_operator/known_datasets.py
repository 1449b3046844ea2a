"""Datasets found in the store a moment ago: a burst of new runs on one dataset looks it up
once, not once per run.

Before a run's training Job is created, its dataset is looked up, so that a wrong URI fails
the run with a message that names spec.dataset.uri instead of a pod that fails later. A
thousand runs created together on one dataset asked the store the same question a thousand
times, each a request to the store in the middle of the burst. A "there" is now believed for
FOUND_SECONDS. A dataset deleted within that time is found missing by the training pod,
whose error is the run's. A "missing" is never remembered: the user may be uploading it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FOUND_SECONDS = 10.0


class KnownDatasets:
    def __init__(
        self, seconds: float = FOUND_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._clock = clock
        self._found: dict[str, float] = {}  # URI -> when it was found

    def known(self, uri: str) -> bool:
        """Whether the dataset was found within the last FOUND_SECONDS."""
        at = self._found.get(uri)
        return at is not None and self._clock() - at < self._seconds

    def found(self, uri: str) -> None:
        now = self._clock()
        # Forget the answers too old to be believed, so that the map holds recent URIs only.
        for stale in [u for u, at in self._found.items() if now - at >= self._seconds]:
            del self._found[stale]
        self._found[uri] = now
