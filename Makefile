# Convenience targets; the README's two commands need none of them.
.PHONY: setup test fuzz bench

setup:
	bash .ci/setup

test: setup
	.venv/bin/python -m pytest -q -n 2 tests

fuzz: setup  # as long as asked: make fuzz SECONDS=3600
	.venv/bin/python -m shardc.fuzz --seconds $${SECONDS:-600}

bench: setup
	.venv/bin/python bench/comm_vs_xla.py
