# Heliostat: `make demo` serves a demo archive, `make test` runs the tests. Both install first.
PY := .venv/bin/python
PORT ?= 50051
DEMO ?= demo/archive

.PHONY: install test lint demo demo-archive bench clean

install:
	@bash tools/bootstrap.sh

test: install
	$(PY) -m pytest

lint: install
	.venv/bin/ruff check src tests bench tools
	.venv/bin/ruff format --check src tests bench tools
	.venv/bin/mypy

demo-archive: install
	.venv/bin/heliostat demo-archive $(DEMO) --samples tests/data/jp2
	.venv/bin/heliostat ingest --archive $(DEMO)

demo: demo-archive
	@echo
	@echo "Heliostat demo: gRPC on 127.0.0.1:$(PORT) (health, reflection, ArchiveService, RenderService)"
	@echo "Try, in another shell:"
	@echo "  $(PY) -c \"from datetime import datetime, UTC; from heliostat.client import HeliostatClient;"
	@echo "  c = HeliostatClient('127.0.0.1:$(PORT)'); img = c.closest_image(10, datetime(2014, 2, 3, 2, 30, tzinfo=UTC));"
	@echo "  print(img.id, img.date.ToJsonString(), img.path); open('tile.png', 'wb').write(c.tile(img.id, 0, 0, img.scale * 4).data)\""
	@echo
	.venv/bin/heliostat serve --archive $(DEMO) --grpc-port $(PORT)

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
	@cat bench/results/*.md > bench/results/SUMMARY.md

clean:
	rm -rf build .venv demo src/heliostat/imaging/_openjpeg*.so src/heliostat/v1/*_pb2*.py*
