"""Command-line data tools (`python -m data_tools.NAME --help`)."""
