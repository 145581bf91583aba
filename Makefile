# Entry points; each target is a thin wrapper over a script in scripts/.
.PHONY: setup run test lint bench images mlflow-ui airflow-ui clean

setup:            ## create .venv (Airflow) and .venv-steps (steps)
	bash scripts/setup.sh

run:              ## the main job: one run of the training DAG on the embedded default
	bash scripts/run.sh $(DATE) $(PIPELINE)

test:             ## the whole test suite (lint, unit, DAG, integration)
	bash scripts/test.sh

lint:
	bash scripts/setup.sh && .venv/bin/ruff check .

bench:            ## parse times, DAG wall time, peak memory per step
	bash scripts/setup.sh && . scripts/env.sh && .venv/bin/python scripts/bench.py

.PHONY: mutation
mutation:         ## mutation score of the gate, store, contract, spec and expectations (slow; MODULES=... for some)
	bash scripts/mutation.sh $(MODULES)

images:           ## build the step image (and its base when no registry is reachable)
	bash scripts/build-images.sh

mlflow-ui:        ## MLflow UI on the project's store, http://127.0.0.1:5000
	. scripts/env.sh && .venv-steps/bin/mlflow ui --backend-store-uri "$$MLFLOW_TRACKING_URI" \
	  --default-artifact-root "$$MLCYCLE_ARTIFACT_ROOT" --host 127.0.0.1 --port 5000 --workers 1

airflow-ui:       ## Airflow (scheduler + API server + UI) on the project's home, http://127.0.0.1:8080
	. scripts/env.sh && airflow standalone

clean:            ## remove all project-local state (Airflow DB, MLflow store, data store)
	rm -rf .local
