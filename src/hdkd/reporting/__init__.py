"""Rendering: Markdown/HTML/plots from computed results."""
