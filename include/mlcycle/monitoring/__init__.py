"""Monitoring: is the model in production still looking at the world it was trained on?

Split along its seams: ``data`` chooses the rows (the interval's current data, the production
model's training data as reference), ``report`` runs Evidently on them, ``decision`` turns the figures
into a verdict and decides whether it triggers a retrain (episodes, cool-down, the drift ledger),
``step`` is the ``monitor`` step that ties them together, and ``replay`` sends a past day's rows to a
serving endpoint as live traffic. Nothing here imports Airflow; Evidently is imported only when a
report runs.
"""
