# Entry points; each target is a thin wrapper over a script in scripts/.
# Recipes run in bash: several source scripts/env.sh, which needs bash (Debian's /bin/sh is dash).
SHELL := /bin/bash
.PHONY: setup run test lint bench bench-scale bench-training bench-monitoring bench-history bench-online bench-scoring bench-object-store images mlflow-ui airflow-ui alert-sinks clean serve serving-image bench-serving

setup:            ## create .venv (Airflow) and .venv-steps (steps)
	bash scripts/setup.sh

run:              ## the main job: one run of the training DAG on the embedded default
	bash scripts/run.sh "$(DATE)" "$(PIPELINE)"  # quoted: an empty DATE keeps its place

test:             ## the whole test suite (lint, unit, DAG, integration)
	bash scripts/test.sh

lint:             ## ruff check, and ruff format --check (files listed in pyproject.toml are not yet formatted)
	bash scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:            ## parse times, DAG wall time, peak memory per step
	bash scripts/setup.sh && . scripts/env.sh && .venv/bin/python scripts/bench.py

bench-scale:      ## every step of one interval at 10k, 100k, 330k rows a day (slow; SIZES=10000,100000 for fewer)
	bash scripts/setup.sh && . scripts/env.sh && .venv-steps/bin/python scripts/bench_scale.py $(if $(SIZES),--sizes $(SIZES))

bench-training:   ## the search on a 25k-row window with a 100-value categorical, quiet and busy
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_training.py

bench-object-store: ## the 28-day bikeshare run on a local store and on SeaweedFS, per step (SCALE=1 adds the 2.8M-row window)
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_object_store.py $(if $(SCALE),--scale)

bench-scoring:    ## batch scoring of the 9.24M-row scale window, ONNX vs Pipeline (ROWS=20000 rows a day for less)
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_scoring.py $(if $(ROWS),--rows-per-day $(ROWS))

bench-history:    ## bikeshare's hold-out RMSE with and without its history features, over dates of 2011 (ENDS=... for others)
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_history.py $(if $(ENDS),--ends $(ENDS))

bench-online:     ## what the online lookup of history features adds to a one-row request (SQLite and Redis, 4 connections)
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_online.py

bench-monitoring: ## the monitor step's cost, drift days per month of 2011, false positives on a same-distribution replay
	bash scripts/setup.sh && .venv-steps/bin/python scripts/bench_monitoring.py

.PHONY: mutation
mutation:         ## mutation score of the modules that decide (gate, store, contract, spec and schema, expectations, drift, rollout, serving, validate; slow; MODULES=... for some)
	bash scripts/mutation.sh $(MODULES)

images:           ## build the step image (and its base when no registry is reachable)
	bash scripts/build-images.sh

mlflow-ui:        ## MLflow UI on the project's store, http://127.0.0.1:5000
	. scripts/env.sh && .venv-steps/bin/mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" \
	  --default-artifact-root "$$MLCYCLE_ARTIFACT_ROOT" --host 127.0.0.1 --port 5000 --workers 1

airflow-ui:       ## Airflow (scheduler + API server + UI) on the project's home, http://127.0.0.1:8080
	. scripts/env.sh && airflow standalone

alert-sinks:      ## local mail and webhook sinks for failure alerts (airflow_settings.yaml points at them)
	bash scripts/setup.sh && .venv/bin/python scripts/alert_sinks.py

clean:            ## remove all project-local state (Airflow DB, MLflow store, data store)
	rm -rf .local

# --- one check at a time: what both CI systems and the git hooks call (CONTRIBUTING.md) -----------
.PHONY: unit dag-tests ci-checks coverage docs hooks ci deploy-trigger format-baseline
AUTO_APPROVE ?= true

unit:             ## the step package's unit tests (.venv-steps)
	bash scripts/setup.sh && . scripts/env.sh && .venv-steps/bin/python -m pytest tests/unit tests/data -q

dag-tests:        ## DAG integrity (.venv)
	bash scripts/setup.sh && . scripts/env.sh && .venv/bin/python -m pytest tests/dags -q

ci-checks:        ## the CI files, hooks and docs: actionlint, GitLab schema, gitlab-ci-local, pre-commit, mkdocs
	bash scripts/setup.sh && . scripts/env.sh && .venv/bin/python -m pytest tests/ci -q

format-baseline:  ## list the files ruff format would still change as not yet formatted (review the diff)
	bash scripts/setup.sh && .venv/bin/python scripts/ruff_format_baseline.py

coverage:         ## combine the coverage of the last `make test`, write coverage.xml, check the floors
	bash scripts/coverage.sh

docs:             ## the documentation site (README, operations guide, API reference) into site/
	bash scripts/setup.sh && .venv/bin/mkdocs build --strict

hooks:            ## install the git hooks: pre-commit (lint, format, files) and pre-push (DAG and unit tests)
	bash scripts/setup.sh && .venv/bin/pre-commit install --hook-type pre-commit --hook-type pre-push

ci:               ## what CI runs: install PostgreSQL and Docker, build the images, make test
	bash .ci/run

deploy-trigger:   ## trigger deploy_<PIPELINE> on the Airflow at $$AIRFLOW_API_URL: make deploy-trigger ENV=staging
	@case "$(ENV)" in staging|production) ;; *) echo "error: ENV must be staging or production (got '$(ENV)')" >&2; exit 2;; esac
	python3 scripts/trigger_dag.py --dag-id "deploy_$(or $(PIPELINE),bikeshare)" --note "$${CI_COMMIT_SHA:-$${GITHUB_SHA:-manual}}" \
	  --conf '{"version": "$(VERSION)", "target": "$(ENV)", "auto_approve": $(AUTO_APPROVE)}'

serve:            ## serve the embedded default's @champion on http://127.0.0.1:8000 (after make run)
	bash scripts/serve.sh $(PIPELINE) $(PORT)

serving-image:    ## build the serving image of @champion: mlcycle-serving-<pipeline>:v<version>
	bash scripts/serving-image.sh $(PIPELINE)

bench-serving:    ## mlcycle serve vs mlflow models serve, MLServer and BentoML on @champion (needs wrk); MODEL_URI=... for another model
	bash scripts/setup.sh && . scripts/env.sh && .venv-steps/bin/python scripts/bench_serving.py \
	  --model-uri "$(or $(MODEL_URI),models:/$(or $(PIPELINE),bikeshare)@champion)"

.PHONY: audit
audit:            ## pip-audit of every pinned environment (needs PyPI's JSON API or OSV; not part of make test)
	bash scripts/audit.sh

.PHONY: stack stack-down bench-stack
stack:            ## the whole system in containers (docker/compose.yaml): build, start, wait until healthy, print URLs; WORKERS=2 for two Celery workers
	bash scripts/stack.sh up $(or $(WORKERS),1)

stack-down:       ## remove the stack's containers (steps and deploy ones too), network and volumes
	bash scripts/stack.sh down

bench-stack:      ## cold and warm `make stack` to healthy, idle memory, a 14-day backfill on 1 vs 2 workers
	bash scripts/setup.sh && .venv/bin/python scripts/bench_stack.py

.PHONY: deploy
deploy:           ## deploy @champion (or VERSION=n) of the embedded default through deploy_<PIPELINE>, auto-approved; print the URL
	bash scripts/setup.sh && . scripts/env.sh && \
	airflow db migrate >"$$AIRFLOW_HOME/db-migrate.log" 2>&1 && \
	airflow dags test "deploy_$(or $(PIPELINE),bikeshare)" \
	  --conf '{"version": "$(VERSION)", "target": "production", "auto_approve": true}' && \
	.venv-steps/bin/mlcycle deploy-status --pipeline "$(or $(PIPELINE),bikeshare)" 2>/dev/null | tail -n 1 | \
	  .venv/bin/python -c 'import json, sys; s = json.load(sys.stdin); print("\n==> production: %s serves version %s (slot %s)" % (s["production_url"], s["production_version"], s["live"]))'
