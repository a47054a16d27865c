"""The list as CSV, for Excel in French: `;` between fields (the French list separator,
since `,` is the decimal mark), a UTF-8 byte order mark (without it Excel reads the file
as Windows-1252 and the accents break), every page of the list streamed, never held whole.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from psycopg_pool import ConnectionPool

from query.reads import Filters, list_messages, status_of
from query.screen_text import badge, local_time, text

BOM = "\ufeff"
PAGE_SIZE = 1000
COLUMNS = ("col_sent", "col_sender", "col_recipient", "col_subject", "col_status")

# A cell starting with one of these is a formula to Excel (and LibreOffice): a subject
# "=HYPERLINK(...)" from outside would run when the file is opened. OWASP's advice: make
# it text with a leading apostrophe, which Excel hides.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_lines(pool: ConnectionPool, filters: Filters, lang: str, zone: ZoneInfo) -> Iterator[str]:
    """The header, then one chunk per page of the list, newest first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow([text(key, lang) for key in COLUMNS] + [text("col_status_code", lang)])
    yield BOM + _drain(buffer)
    after = None
    while True:
        page = list_messages(pool, filters, PAGE_SIZE, after)
        for row in page.rows:
            status = status_of(row)
            writer.writerow(
                [
                    local_time(row["sent_at"], zone),
                    cell(row["sender"]),
                    cell(row["recipient"]),
                    cell(row["subject"]),
                    badge(status, lang).label,
                    status.value if status is not None else "",
                ]
            )
        yield _drain(buffer)
        if page.next is None:
            return
        after = page.next


def _drain(buffer: io.StringIO) -> str:
    chunk = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return chunk
