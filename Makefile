.PHONY: setup test lint demo demo-quick bench weights

setup:
	python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]"

test:
	. .venv/bin/activate && ruff check src tests && ruff format --check src tests && mypy && python -m pytest -q

lint:
	. .venv/bin/activate && ruff check src tests && ruff format --check src tests && mypy

demo:
	. .venv/bin/activate && branchmerge demo

demo-quick:
	. .venv/bin/activate && branchmerge demo --quick

weights:
	. .venv/bin/activate && python -m branchmerge.tinylab.build
