# The README's two commands are `make up` and `make test`; both set the machine up first.
.PHONY: setup up test test-fast lint protos bench

setup:
	bash scripts/setup.sh

up: setup
	.venv/bin/kvmesh up

test: setup lint
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

# The quick loop: no engine, a few seconds.
test-fast:
	.venv/bin/python -m pytest -q tests/unit

lint:
	.venv/bin/ruff check kvmesh services engines tests scripts bench triton_models
	.venv/bin/lint-imports
	node_modules/.bin/buf lint
	bash scripts/buf_breaking.sh

protos:
	.venv/bin/python scripts/gen_protos.py
	.venv/bin/python scripts/build_rest.py --openapi

bench:
	.venv/bin/python -m bench.e2e_vs_vllm
