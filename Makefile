# One task runner; CI runs the same commands through .ci/run.
.PHONY: up test lint format types generate check-generated ci

up:
	./scripts/up

test:
	./scripts/test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/buf lint
	.venv/bin/buf format --diff --exit-code

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
	.venv/bin/buf format -w

types:
	.venv/bin/mypy mesh runtime gateway llmproxy auth ide

generate:
	scripts/gen-protos

check-generated: generate
	git diff --exit-code -- runtime/v1 llmproxy/v1

ci:
	bash .ci/run
