"""Models: builders (``builders``), learning-rate rules (``schedules``) and metrics (``metrics``).

Imports only ``experiments.common``; builders receive an ``inputs.dataset.DataSpec`` as an argument.
"""
