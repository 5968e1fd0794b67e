"""Analysis over finished runs: pure functions from result records to tables, fits and plots.

Imports only ``experiments.common``: it never trains and never reads gin.
"""
