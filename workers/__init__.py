"""Workers: the model zoo, and (with the search issue) running searches on Ray.

Imports flow service → workers → {kernels, latency_models} → search_spaces.
"""
