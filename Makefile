# Quick start: `make demo` (main job) and `make test` (test suite). Each sets up
# everything it needs first (scripts/setup.sh: Debian packages, .venv, torch, package).
.PHONY: setup demo test clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/histogen demo --out histogen-demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf .venv histogen-demo build dist tests/screenshots
