"""Rendering: Markdown, HTML, tables and figures of results computed elsewhere (no training, no metrics)."""
