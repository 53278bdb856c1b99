# One task runner. CI runs `make ci`, which is `bash .ci/run`: PostgreSQL,
# ./scripts/test with coverage, then `make checks`.
.PHONY: up test coverage lint format types generate check-generated breaking checks ci

up:
	./scripts/up

test:
	./scripts/test

# The whole suite with the coverage report; fails under the floor set in
# pyproject.toml ([tool.coverage.report] fail_under).
coverage:
	./scripts/test --cov

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

# The committed stubs are what scripts/gen-protos makes from proto/.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- runtime/v1 llmproxy/v1)" ]; then \
	  git status --porcelain -- runtime/v1 llmproxy/v1; \
	  git diff --stat -- runtime/v1 llmproxy/v1; \
	  echo "scripts/gen-protos changed the generated stubs: regenerate and commit them" >&2; \
	  exit 1; \
	fi

# proto/ against the previous commit (buf.yaml: breaking.use FILE); the
# working tree is compared, so an uncommitted break shows too.
breaking:
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null; then \
	  .venv/bin/buf breaking --against "$$(git rev-parse --git-common-dir)#format=git,ref=$$(git rev-parse HEAD~1)"; \
	else \
	  echo "breaking: no previous commit to compare proto/ with; skipped"; \
	fi

checks: lint types check-generated breaking

ci:
	bash .ci/run
