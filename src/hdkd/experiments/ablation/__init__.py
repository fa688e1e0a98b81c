"""Ablation grids (``hdkd ablate``): variants, planning, running, records and the summary."""
