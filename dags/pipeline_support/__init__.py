"""Airflow-side helpers shared by the DAG files: the step runner seam and failure alerts.

Nothing here imports the ML stack: steps are reached only through their command line.
"""
