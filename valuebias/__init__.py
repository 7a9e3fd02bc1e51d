"""ValueBias science: word lists, prompts, scoring kernels and statistics.

Plain Python: nothing in this package imports Dagster or storage libraries, so every function can be
tested and reused on its own. Dagster assets (``assets/``) call these functions.
"""
