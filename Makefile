.PHONY: test lint
test:
	./scripts/test.sh
lint:
	.venv/bin/ruff check ram tests bench migrations && .venv/bin/mypy ram
