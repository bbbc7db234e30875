"""Tables and plots from run records (sees only `chared_flows.records`)."""

from chared_flows.reports.report import write_report

__all__ = ["write_report"]
