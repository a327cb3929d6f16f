# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install lineguard with its extras (torch comes from the local disk).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= runs/demo
# Code that runs on the line computer (Jetson, Python 3.8, no torch): checked with vermin and
# imported with torch blocked (tests/integration/test_runtime_boundary.py).
# In edge/, only the exporter to ONNX, the PyTorch reference runner and the quantizer are development-side.
EDGE_DEV  := edge/torch2onnx.py edge/torch_runner.py edge/quantize.py
LINE_SIDE := __init__.py __main__.py cli.py config.py console.py files.py metrics.py options.py workers.py data sim \
             $(wildcard inspect/*.py) \
             $(filter-out $(EDGE_DEV),$(wildcard edge/*.py edge/runners/*.py))

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,runtime,line,report,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default data set (the procedural line simulator).
demo: setup
	rm -rf $(DEMO)
	$(BIN)/lineguard data simulate --n 2000 --seed 0 --out $(DEMO)/sim
	$(BIN)/lineguard data validate $(DEMO)/sim
	$(BIN)/lineguard data split $(DEMO)/sim --val 0.1 --test 0.2 --seed 0
	$(BIN)/lineguard data stats $(DEMO)/sim
	$(BIN)/lineguard data preview $(DEMO)/sim --out $(DEMO)/preview.png
	$(BIN)/lineguard synth fit --data $(DEMO)/sim --out $(DEMO)/gan --preset cpu --kimg 2
	$(BIN)/lineguard synth generate --gan $(DEMO)/gan --data $(DEMO)/sim --n 1000 --size 256 --out $(DEMO)/synthetic
	# Training at the simulator's 256 px (at 192 px faint scratches and stains blur away: 88%, at 128 px 81%), 3 epochs,
	# batch 16, LR 2e-3 after a short warm-up; the CNN's first two stages stay at their ImageNet weights (1.3x the
	# images/s); 10% more defect draws, synthetic, on top of the real ones (the CPU GAN's 'scratches' are blobs).
	# Measured: 87.3-89% test in 4.6-5.6 min of training (the whole demo 9.8 min); 8 epochs (13.5 min) reach 92%.
	printf 'lr: 0.002\nbatch_size: 16\nwarmup_epochs: 0.3\nfrozen_stages: 2\n' > $(DEMO)/train-config.yaml
	$(BIN)/lineguard train --data $(DEMO)/sim --out $(DEMO)/model --config $(DEMO)/train-config.yaml --img-size 256 \
		--epochs 3 --weights imagenet-lite0 --synthetic $(DEMO)/synthetic --synthetic-extra 0.1
	$(BIN)/lineguard eval --model $(DEMO)/model --data $(DEMO)/sim --split test --target-escape 0.01
	$(BIN)/lineguard export --model $(DEMO)/model --format onnx --data $(DEMO)/sim
	$(BIN)/lineguard eval --model $(DEMO)/model --data $(DEMO)/sim --split test --backend ort   # as the line runs it
	# INT8 must keep accuracy within 1 point or the export refuses it. The 3-epoch demo model (~88%, thin
	# margins) can lose more (-5.5 to +0.5 points measured at 128 px, -0.25 at 192 px, 0.0 at 256 px): then the demo shows the
	# refusal and the bench reports the INT8 row as missing. The daemon below takes the INT8 model where it is kept.
	$(BIN)/lineguard export --model $(DEMO)/model --format onnx-int8 --data $(DEMO)/sim || \
		echo "INT8 refused, see $(DEMO)/model/model-int8.onnx.report.json; benchmarking without it"
	$(BIN)/lineguard bench --model $(DEMO)/model --backend ort --backend ort-int8 --backend torch --batch 1 --batch 8 --rounds 3 \
		--out $(DEMO)/bench.json
	# The line: the daemon decides simulated parts (new ones: seed 1) at 30 parts/s for 30 s with the demo model,
	# signalling rejects to a stand-in PLC (pymodbus' server on 127.0.0.1:5020); then the results database's totals.
	$(BIN)/python -m lineguard.inspect.plcsim --port 5020 & plc=$$!; sleep 3; \
	$(BIN)/lineguard inspect run --model $(DEMO)/model --set source.seed=1 --set source.rate=30 --set source.parts=900 \
		--set db=$(DEMO)/line/results.db --set 'archive={path: $(DEMO)/line/archive}' \
		--set 'outputs=[{kind: modbus, port: 5020}]' --set metrics.port=0 --quiet; status=$$?; kill $$plc; wait $$plc; exit $$status
	$(BIN)/lineguard inspect status --db $(DEMO)/line/results.db
	$(BIN)/lineguard report --db $(DEMO)/line/results.db --archive $(DEMO)/line/archive \
		--out $(DEMO)/line/report.html --pdf $(DEMO)/line/report.pdf
	@echo "demo done: contact sheets in $(DEMO)/preview*.png, GAN samples in $(DEMO)/gan/samples; model, card, ONNX (and INT8 if kept) in $(DEMO)/model, bench.json in $(DEMO); line results in $(DEMO)/line/results.db, images in $(DEMO)/line/archive, QA report in $(DEMO)/line/report.html and .pdf"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/vermin --target=3.8- --violations --eval-annotations --no-tips $(LINE_SIDE)

# Tests of the plant database run against a throw-away PostgreSQL cluster (.ci/postgres), started here when the
# server is installed and LINEGUARD_TEST_POSTGRES is not set already (without either they skip, except under CI).
test: lint
	@if [ -z "$$LINEGUARD_TEST_POSTGRES" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		eval "$$(.ci/postgres start)" && trap '.ci/postgres stop "$$LINEGUARD_PG_DIR"' EXIT; fi; \
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
