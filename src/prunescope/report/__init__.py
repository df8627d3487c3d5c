"""Reports: study, sweep and latency tables and plots, report.md, atomic output folders."""
