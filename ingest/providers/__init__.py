"""One module per mail provider: its payloads, its name table, its quirks.

Each exposes NAME and `normalize(payload, source) -> NormalizedEvent`; the fixed pipeline
in ingest.pipeline does the rest.
"""

from __future__ import annotations

from types import ModuleType

from ingest.providers import brevo

PROVIDERS: dict[str, ModuleType] = {brevo.NAME: brevo}
