#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules that decide things: the gate, the store, the runner
# contract, the spec loader and its schema, the expectations builder, the drift decision, the
# deploy's watch, the serving schema and model (ONNX parity), and validate. Not part of `make test` (minutes, not seconds).
#
#   scripts/mutation.sh                 every module below
#   scripts/mutation.sh evaluate store  some of them
#
# Each module is mutated with only the fast unit tests that cover it, in the environment those
# tests need (.venv-steps for the step package, .venv for dags/pipeline_support). mutmut finds a
# package only at the top of its folder (./, src/ or source/), so each run works on a staged copy
# under $MUTATION_DIR (default .local/mutation/<module>): the package at the top, with tests/ and
# include/ next to it. The source tree itself is never changed.
#
# Prints, per module, killed (timeouts included) / total and the score, then the surviving mutants (`mutmut show NAME`
# in the staged folder prints the diff of one). Exits non-zero when a module scores under
# MUTATION_MIN (default 80).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${MUTATION_DIR:-$ROOT/.local/mutation}
MIN=${MUTATION_MIN:-80}

# module -> "environment|package folder|file to mutate (inside the package)|test files|tests to leave out"
# (left out: tests of the project's folder layout, which the staged copy does not reproduce)
declare -A MODULES=(
  [evaluate]=".venv-steps|include/mlcycle|steps/evaluate.py|tests/unit/steps/test_evaluate_decide.py tests/unit/steps/test_evaluate_champion.py"
  [store]=".venv-steps|include/mlcycle|store.py|tests/unit/test_store.py tests/unit/test_store_layout.py tests/unit/test_store_places.py"
  [contract]=".venv|dags/pipeline_support|contract.py|tests/dags/test_contract.py"
  [spec]=".venv-steps|include/mlcycle|spec.py|tests/unit/test_spec.py tests/unit/test_spec_rules.py|tests/unit/test_spec.py::test_bundled_pipelines_folder_is_the_default"
  [expectations]=".venv-steps|include/mlcycle|expectations.py|tests/unit/test_expectations.py tests/unit/test_expectations_exact.py"
  [decision]=".venv-steps|include/mlcycle|monitoring/decision.py|tests/unit/monitoring/test_decision.py tests/unit/test_boundaries.py"
  [spec_schema]=".venv-steps|include/mlcycle|spec_schema.py|tests/unit/test_spec_schema.py tests/unit/test_spec_rules.py tests/unit/test_spec_strict.py tests/unit/test_spec.py|tests/unit/test_spec.py::test_bundled_pipelines_folder_is_the_default"
  [rollout]=".venv-steps|include/mlcycle|deploy/figures.py|tests/unit/deploy/test_deploy_parts.py tests/unit/test_boundaries.py"
  [serving_schema]=".venv-steps|include/mlcycle|serving/schema.py|tests/unit/serving/test_schema_fields.py tests/unit/serving/test_schema_model.py tests/unit/serving/test_app.py tests/unit/serving/test_raw_rows.py"
  [serving_model]=".venv-steps|include/mlcycle|serving/model.py|tests/unit/serving/test_model_parts.py tests/unit/serving/test_schema_model.py tests/unit/serving/test_app.py tests/unit/serving/test_onnx_trees.py tests/unit/serving/test_export_report.py tests/unit/test_boundaries.py"
  [validate]=".venv-steps|include/mlcycle|steps/validate.py|tests/unit/steps/test_restatement.py tests/unit/steps/test_validate_messages.py tests/unit/steps/test_validate.py tests/unit/steps/test_validate_plain_words.py tests/unit/test_integrity.py tests/unit/test_boundaries.py"
)
ORDER=(evaluate store contract spec expectations decision spec_schema rollout serving_schema serving_model validate)
[ $# -gt 0 ] && ORDER=("$@")

bash scripts/setup.sh >/dev/null

stage() {  # stage MODULE: a fresh copy laid out the way mutmut expects
  local module=$1 env pkg_dir target tests skip pkg dir deselect=""
  IFS='|' read -r env pkg_dir target tests skip <<<"${MODULES[$module]}"
  for t in $skip; do deselect+="\"--deselect\", \"$t\", "; done
  pkg=$(basename "$pkg_dir")
  dir="$WORK/$module"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r "$pkg_dir" "$dir/$pkg"
  cp -r tests "$dir/tests"
  # Tests read ROOT/include; the step package finds its specs next to itself (../pipelines), so
  # those point into the copied include/ (links made before mutmut copies include/ into mutants/).
  cp -r include "$dir/include"
  cp -r README.md docs .ci "$dir/"  # the spec reference, the published JSON Schema, the CI specs
  rm -rf "$dir"/include/*.egg-info
  mkdir -p "$dir/mutants"
  for sub in pipelines expectations data; do ln -s "include/$sub" "$dir/mutants/$sub"; done
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  local test_list; test_list=$(printf '"%s", ' $tests)
  cat >"$dir/pyproject.toml" <<EOF
[tool.mutmut]
source_paths = ["$pkg"]
only_mutate = ["$pkg/$target"]
also_copy = ["include", "README.md", "docs", ".ci"]
pytest_add_cli_args = [${deselect}"-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [${test_list%, }]
use_git_change_detection = false

[tool.pytest.ini_options]
addopts = "-ra --strict-markers"
markers = ["integration: real services", "docker: Docker daemon", "postgres: PostgreSQL"]
filterwarnings = ["ignore::DeprecationWarning"]
EOF
  echo "$dir"
}

summary=()
status=0
for module in "${ORDER[@]}"; do
  [ -n "${MODULES[$module]:-}" ] || { echo "unknown module $module (one of: ${!MODULES[*]})" >&2; exit 2; }
  IFS='|' read -r env pkg_dir target tests _ <<<"${MODULES[$module]}"
  dir=$(stage "$module")
  echo "==> mutating $pkg_dir/$target with $tests ($env)"
  started=$SECONDS
  (cd "$dir" && "$ROOT/$env/bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" >"$dir/run.log" 2>&1) \
    || { tail -n 40 "$dir/run.log" >&2; echo "mutmut failed for $module (log: $dir/run.log)" >&2; exit 1; }
  (cd "$dir" && "$ROOT/$env/bin/mutmut" export-cicd-stats >/dev/null)
  line=$("$ROOT/.venv/bin/python" - "$dir/mutants/mutmut-cicd-stats.json" "$module" "$MIN" "$((SECONDS - started))" <<'EOF'
import json, sys
stats, module, floor, seconds = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3]), sys.argv[4]
# A mutant that makes the tests hang (timeout) was detected too; one no test reaches (no_tests) was not.
judged = stats["total"] - stats["skipped"]
detected = stats["killed"] + stats["timeout"]
score = 100.0 * detected / judged if judged else 0.0
extra = ", ".join(f"{k} {stats[k]}" for k in ("no_tests", "timeout", "suspicious", "segfault") if stats[k])
print(f"{module:13s} {detected:4d} / {judged:4d} killed  {score:5.1f}%  "
      f"survived {stats['survived']}{', ' + extra if extra else ''}  ({seconds} s)"
      f"{'' if score >= floor else '  BELOW ' + format(floor, 'g') + '%'}")
EOF
)
  summary+=("$line")
  [[ "$line" == *BELOW* ]] && status=1
  echo "    $line"
  (cd "$dir" && "$ROOT/$env/bin/mutmut" results 2>/dev/null | sed 's/^/    /') || true
done

echo
echo "## Mutation score per module (killed / mutants; goal >= ${MIN}%)"
printf '%s\n' "${summary[@]}"
exit $status
