"""Model serving: a fast, MLflow-compatible prediction API over one model folder.

- ``schema``: the request schema a model carries (features with type, range and allowed values),
  derived from the pipeline spec at training time and stored in the MLmodel ``metadata``.
- ``export``: training-side helpers (ONNX conversion, parity on the evaluation slice); imports
  skl2onnx and runs only where the model is trained.
- ``model``: loads a model folder, encodes JSON rows straight to numpy, runs the ONNX fast path
  when it matches the scikit-learn Pipeline within the tolerance, else the Pipeline.
- ``predlog``: the prediction log, daily Parquet partitions written off the request path.
- ``app``: the FastAPI application (``/predict``, ``/invocations``, ``/health``, ``/ready``,
  ``/metadata``, ``/metrics``).
- ``fetch`` and ``image``: resolve a ``models:/`` URI into a self-contained model folder, and build
  the serving image that holds it.

Nothing here imports Airflow; the server itself never imports MLflow.
"""
