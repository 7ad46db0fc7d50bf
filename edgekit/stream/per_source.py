"""The per-source seam of the loop: a chain of stages for each source, keyed by its name.

After postprocessing, each frame's :class:`~edgekit.stream.results.FrameResult` goes through its
source's chain, in frame order, before the run-wide consumers (JSON lines, console, server,
metrics) see it. A stage has the sink protocol: ``open(info)`` (``info.source`` is its source's
name, ``info.fps`` its frame rate once the source opened), ``write(result)`` and ``close()``. A
stage may change ``result.results`` (a tracker adds track ids, analytics add line and zone
events), so the stages after it and every run-wide consumer see what it added; a per-source
consumer (a recording, an event publisher) is simply the last stage of a chain.

``PerSource(factory)`` builds the chains: ``factory(name)`` returns the list of stages for source
``name``; chains are built and opened, in order, when the loop opens its consumers (before any
source opens, so a bad output path fails first), and closed in reverse order.
"""

from __future__ import annotations

import contextlib


class SourceView:
    """What a per-source stage learns when it opens: the run's info, seen from one source."""

    def __init__(self, info, source: str):
        self._info, self.source = info, source

    @property
    def fps(self) -> float | None:
        return self._info.fps_of(self.source)

    def __getattr__(self, key):
        return getattr(self._info, key)


class PerSource:
    """Routes each result to its source's chain of stages (see the module)."""

    def __init__(self, factory):
        self.factory = factory
        self.chains: dict[str, list] = {}

    def open(self, info) -> None:
        try:
            for name in info.sources:
                chain = self.chains[name] = []
                for stage in self.factory(name):
                    stage.open(SourceView(info, name))
                    chain.append(stage)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()  # what opened before the failure
            raise

    def write(self, result) -> None:
        for stage in self.chains.get(result.source, ()):
            stage.write(result)

    def close(self) -> None:
        """Close every stage opened (each chain last stage first); raise the first error after all."""
        errors = []
        for chain in self.chains.values():
            for stage in reversed(chain):
                try:
                    stage.close()
                except Exception as exc:
                    errors.append(exc)
        self.chains = {}
        if errors:
            raise errors[0]
