"""mlcycle: the steps of a model lifecycle, each a typed function with a command-line entry point.

Airflow decides when and in which order; this package decides what. It never imports Airflow.
"""

__version__ = "0.1.0"
