# The README's two commands: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
.PHONY: demo test setup

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/dinolab sweep ablations/demo.yaml
	.venv/bin/dinolab report ablations/demo.yaml

test: setup
	@bash scripts/system_deps.sh
	.venv/bin/python -m pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS)
