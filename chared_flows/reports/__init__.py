"""Tables and plots from run records (sees only `chared_flows.records`)."""

from chared_flows.reports.report import verdict_table_text, write_report

__all__ = ["verdict_table_text", "write_report"]
