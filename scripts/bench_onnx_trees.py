"""One-row inference per model family: the ONNX fast path against the scikit-learn Pipeline.

For each family and task (bikeshare for regression, the generated classification set), and gradient
boosting once more with every categorical native (``categorical_encoding: native``), fits the spec's
Pipeline, exports it as training does (mlcycle.serving.export.to_onnx, tree ensembles in
double: mlcycle.serving.onnx_trees) and times one-row predictions both ways in this process, the
same row each time. Prints the parity, the median microseconds per row and the ratio against the
Pipeline measured in the same run::

    .venv-steps/bin/python scripts/bench_onnx_trees.py [--reps 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT)]


def _median_us(fn, reps: int) -> float:
    fn()  # warm
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()

    import onnxruntime as ort
    import pandas as pd

    from mlcycle.modeling import build_pipeline
    from mlcycle.serving.export import _feeds, serving_schema, to_onnx
    from mlcycle.sources.file import read_table
    from mlcycle.spec import MODEL_FAMILIES, load_spec
    from mlcycle.threads import limit_threads
    from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant

    limit_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    local = make_classification_dataset(tmp / "data", days=20)
    bikes = pd.read_csv(ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv").head(4000)
    print(f"{'task':<15}{'family':<24}{'parity':>10}{'pipeline us':>14}{'onnx us':>10}{'speed-up':>10}")
    for task, families in MODEL_FAMILIES.items():
        variants = [(f, {}) for f in families]
        if "hist_gradient_boosting" in families:
            variants.append(("hist_gradient_boosting", {"categorical_encoding": "native"}))
        for family, options in variants:
            base = BIKESHARE_SPEC if task == "regression" else local
            spec = load_spec(
                write_spec_variant(
                    base, tmp / f"{task}-{family}-{len(options)}.yaml", model={"family": family, **options}
                )
            )
            label = family if not options else "hgb, native categ."
            frame = bikes if task == "regression" else read_table(spec.source.path(), "csv")
            x, y = frame[spec.feature_names], frame[spec.target]
            model = build_pipeline(spec).fit(x, y)
            schema = serving_schema(spec, model, x)
            export = to_onnx(schema, model, x)
            row = x.head(1)
            exact = model.predict_proba if task == "classification" else model.predict
            pipeline_us = _median_us(lambda r=row, f=exact: f(r), args.reps)
            if export.model is None:
                print(
                    f"{task:<15}{label:<24}{'-':>10}{pipeline_us:>14.0f}{'-':>10}{'-':>10}  ({export.reason[:60]})"
                )
                continue
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            session = ort.InferenceSession(export.model, opts, providers=["CPUExecutionProvider"])
            feeds = _feeds(schema, row)
            onnx_us = _median_us(lambda s=session, f=feeds: s.run(None, f), args.reps)
            print(
                f"{task:<15}{label:<24}{export.max_abs_diff:>10.1e}{pipeline_us:>14.0f}{onnx_us:>10.0f}"
                f"{pipeline_us / onnx_us:>9.0f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
