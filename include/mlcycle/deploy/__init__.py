"""Deploying a model version: staging, approval, blue/green rollout behind nginx, watch, record.

The deploy DAG (``dags/deploy.py``) calls these through the CLI (``mlcycle deploy-*``); nothing
here imports Airflow. The seams:

- ``state``: where a pipeline's deploy state lives (``<store>/<pipeline>/deploy/``) and the lock
  that keeps two deploys from interleaving;
- ``slots``: serving containers (blue, green, staging): start, wait for ``/ready``, stop;
- ``proxy``: the nginx reverse proxy on the production port, and the switch between slots;
- ``load``: a bounded, fixed-rate load generator (smoke test, watch, benchmark, tests);
- ``smoke``: the staging checks (predictions equal the registry's, bad input gets 4xx, p99 budget);
- ``rollout``: staging, rollout, watch, and the way back;
- ``record``: which version a run deploys, and the registry's aliases and tags afterwards.
"""
