"""The audit report: tables (shared with the notebooks), plots (drawing only) and the writer of
report/ (lira/report/writer.py says what each file holds)."""

from lira.report.tables import MAIN_ATTACKS, format_table, main_attack, markdown_table, table_rows
from lira.report.writer import per_example_table, write_report

__all__ = [
    "MAIN_ATTACKS",
    "format_table",
    "main_attack",
    "markdown_table",
    "per_example_table",
    "table_rows",
    "write_report",
]
