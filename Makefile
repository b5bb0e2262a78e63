# spine-seg: every command a user or CI needs. Versions live in setup.cfg only.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RAW ?= ../shared/data/aasce
DATA ?= data/aasce
FOLD ?= 0
# A data set of your own (DATA other than data/aasce) gets its own weights, run folder, evaluation, report and
# outputs, named after its folder, so that it never resumes or overwrites the shared set's (README, "Training on
# your own data").
OWN_DATA := $(if $(filter $(abspath $(DATA)),$(abspath data/aasce)),,$(notdir $(abspath $(DATA))))
SUFFIX := $(if $(OWN_DATA),-$(OWN_DATA))
# Training runs (checkpoints, logs) live outside git, one folder per data set and fold.
RUN_DIR ?= $(HOME)/.cache/spine-seg/$(or $(OWN_DATA),train)-fold$(FOLD)
OUT ?= out
# MODELS: where make train writes the three stages' weights and where the other targets take them from: the shipped
# bundle/models for the shared set, models/<name> (ignored by git) for a data set of your own.
MODELS ?= $(if $(OWN_DATA),models/$(OWN_DATA),bundle/models)
CKPT ?= $(MODELS)/model.pt
COARSE_CKPT ?= $(MODELS)/coarse.pt
REFINE_CKPT ?= $(MODELS)/refine.pt
STRUCTURES ?= T12,L1,L2,L3,L4,L5
CHANNELS ?= 7
BUNDLE_RUN := $(PY) -m monai.bundle run --logging_file bundle/configs/logging.conf
INSTALLED := $(VENV)/.installed
# MONAI Label has its own venv: its pins (numpy<2, pydicom<3, torch 2.14) clash with setup.cfg's.
LABEL_VENV ?= .venv-label
LABEL_INSTALLED := $(LABEL_VENV)/.installed
STUDIES ?= $(DATA)/imagesTs
LABEL_PORT ?= 8000

.PHONY: install test lint convert-data train train-coarse train-fine train-refine evaluate audit-labels report infer export export-model predict-test demo bench-convert \
	bench-infer bench-levels bench-walk bench-style clean label-install label-serve test-label

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,export]"
	touch $@

test: install label-install
	$(VENV)/bin/ruff check .
	SPINE_SEG_LABEL_VENV=$(LABEL_VENV) $(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check .

# CONVERT_ARGS: more data_prep options, e.g. "--new-source" or "--label-layout union-last"
CONVERT_ARGS ?=
CONVERT = $(PY) -m data_prep $(RAW) $(DATA) --structure-names $(STRUCTURES) --channels $(CHANNELS) $(CONVERT_ARGS)
# convert-data converts new and changed cases; the targets that need the data convert only where $(DATA) holds no
# conversion yet, so that `make train DATA=...` never converts the default RAW into a data set of your own.
convert-data: install
	$(CONVERT)

$(DATA)/dataset.json: | install
	$(CONVERT)

# Three stages, each resumable from its last checkpoint in $(RUN_DIR)/<stage> and each a target of its own: the
# whole-image coarse network ($(MODELS)/coarse.pt), the fine network on the box around the vertebrae
# ($(MODELS)/model.pt), then the per-vertebra network that redraws each vertebra in its own window ($(MODELS)/refine.pt).
TRAIN = $(BUNDLE_RUN) training --dataset_dir $(DATA) --fold $(FOLD) --ckpt_dir $(MODELS)
TRAIN_CONFIGS_coarse := "['bundle/configs/train.json','bundle/configs/train_coarse.json']"
TRAIN_CONFIGS_fine := bundle/configs/train.json
TRAIN_CONFIGS_refine := "['bundle/configs/train.json','bundle/configs/train_refine.json']"
train: train-coarse train-fine train-refine

train-coarse train-fine train-refine: train-%: $(DATA)/dataset.json
	mkdir -p $(RUN_DIR)/$*
	$(TRAIN) --config_file $(TRAIN_CONFIGS_$*) --run_dir $(RUN_DIR)/$* 2>&1 | tee -a $(RUN_DIR)/$*/train.log

# EVAL_ARGS: bundle overrides, e.g. "--validate#spine_crop#source_key label" (boxes from the expert label: an
# upper bound for stage 1, evaluation only); EVAL_OUT: where to write (default out/eval$(SUFFIX)); EVAL_BASE: an earlier
# evaluation folder to compare with, case by case (mean difference, bootstrap 95 % CI, Wilcoxon p), on all cases
# and on those both name right
EVAL_OUT ?= $(OUT)/eval$(SUFFIX)
EVAL_BASE ?=
evaluate: install
	$(BUNDLE_RUN) --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']" \
		--dataset_dir $(DATA) --fold $(FOLD) --ckpt_dir $(MODELS) --output_dir $(EVAL_OUT) $(EVAL_ARGS)
	$(PY) -m spine_seg.evaluation_table $(EVAL_OUT) --dataset-json $(DATA)/dataset.json
	$(if $(EVAL_BASE),$(PY) -m spine_seg.eval_compare $(EVAL_OUT) $(EVAL_BASE) --levels-right $(DATA)/labelsTr)

# Expert labels: implausible outlines, and each case's levels against the set (offsets from make evaluate if run)
audit-labels: $(DATA)/dataset.json
	$(PY) -m spine_seg.label_audit $(DATA)/dataset.json --out $(OUT)/label_audit$(SUFFIX).csv \
		$(if $(wildcard $(EVAL_OUT)/pred),--eval-dir $(EVAL_OUT))

# README's figures for the shared set; $(OUT)/report-<name> for a data set of your own
REPORT_OUT ?= $(if $(OWN_DATA),$(OUT)/report$(SUFFIX),docs/figures)
# REPORT_ARGS: e.g. --skip-missing-curves, to redraw the rest where the training runs were made on another machine
REPORT_ARGS ?=
report: install
	$(PY) -m spine_seg.report --eval-dir $(EVAL_OUT) --run-dir $(RUN_DIR)/fine --refine-run-dir $(RUN_DIR)/refine \
		--dataset-json $(DATA)/dataset.json --out $(REPORT_OUT) $(REPORT_ARGS)

predict-test: $(DATA)/dataset.json
	$(PY) -m spine_seg.cli predict $(RAW)/test/img --out $(OUT)/test-npy$(SUFFIX) --dataset-json $(DATA)/dataset.json \
		--weights $(CKPT) --coarse-weights $(COARSE_CKPT) --refine-weights $(REFINE_CKPT)

demo: install
	$(PY) -m spine_seg.demo --raw $(RAW) --out $(OUT)/demo

# INFER_ARGS: bundle overrides, e.g. "--num_classes 6" for weights of another class count than the shipped 7
INFER_ARGS ?=
infer: $(DATA)/dataset.json
	$(BUNDLE_RUN) --config_file bundle/configs/inference.json --dataset_dir $(DATA) --output_dir $(OUT)/pred$(SUFFIX) \
		--ckpt_path $(CKPT) --coarse_ckpt_path $(COARSE_CKPT) --refine_ckpt_path $(REFINE_CKPT) $(INFER_ARGS)

export: infer
	$(PY) -m spine_seg.cli export $(OUT)/pred$(SUFFIX) $(OUT)/npy$(SUFFIX) --dataset-json $(DATA)/dataset.json

# TorchScript (MONAI ckpt_export) + ONNX of the trained weights, for deployment (`spine-seg predict --backend onnx`).
export-model: install
	$(PY) -m spine_seg.model_export --ckpt $(CKPT) --coarse-ckpt $(COARSE_CKPT) --refine-ckpt $(REFINE_CKPT) \
		--out-dir $(MODELS)

bench-convert: install
	$(PY) benchmarks/bench_convert.py

bench-infer: install
	$(PY) benchmarks/bench_infer.py
	if [ -d $(RAW)/test/img ]; then $(PY) benchmarks/bench_infer.py --real $(RAW)/test/img --count 20; fi

# Can whole-spine context name the levels? Trains a level counter (about 20 min here) and sets its naming against
# the position prior and, where make evaluate has run, the cascade's (bundle/docs, "Tried, not adopted").
bench-levels: $(DATA)/dataset.json
	$(PY) benchmarks/level_counter.py --dataset-json $(DATA)/dataset.json --fold $(FOLD) \
		$(if $(wildcard $(EVAL_OUT)/pred),--eval-dir $(EVAL_OUT))

# Can the stage-3 network count the thoracic bodies? Walks up from T12 on every labelled case (about 7 min here)
# and sets the count from the top edge against the height-fraction position (bundle/docs, "Tried, not adopted").
bench-walk: $(DATA)/dataset.json
	$(PY) benchmarks/level_walk.py --dataset-json $(DATA)/dataset.json --fold $(FOLD) --figure docs/figures/level_walk.png

# Two annotation styles in the shared set's labels (bundle/docs, "Why 0.90 is out of reach"): the cascade's vertebra
# sizes against each source group's (the year in cases.tsv's file names) on a training fold, STYLE_FOLD, and on FOLD,
# and the Dice with each vertebra scaled to its group's size, or every case to one group's (about 3 min here, after
# make evaluate for both folds, run first where missing: about 2-4 min each).
STYLE_FOLD ?= $(if $(filter 1,$(FOLD)),0,1)
STYLE_EVAL := $(OUT)/eval-fold$(STYLE_FOLD)
bench-style: $(DATA)/dataset.json
	test -d $(EVAL_OUT)/pred || $(MAKE) evaluate
	test -d $(STYLE_EVAL)/pred || $(MAKE) evaluate FOLD=$(STYLE_FOLD) EVAL_OUT=$(STYLE_EVAL)
	$(PY) benchmarks/label_style.py --dataset-json $(DATA)/dataset.json --cases-tsv $(RAW)/cases.tsv --fold $(FOLD) \
		--eval-dir $(EVAL_OUT) --fit-eval-dir $(STYLE_EVAL)

# MONAI Label server venv; versions in requirements-label.txt (torch/torchvision installed first).
label-install: $(LABEL_INSTALLED)

$(LABEL_INSTALLED): requirements-label.txt
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(LABEL_VENV)/bin/python -m pip install -q $$(grep -E '^torch(vision)?==' requirements-label.txt)
	$(LABEL_VENV)/bin/python -m pip install -q -r requirements-label.txt
	touch $@

# MONAI Label's monaibundle sample app with this bundle on http://127.0.0.1:$(LABEL_PORT), offline; with weights
# of your own (MODELS other than bundle/models), a copy of the bundle that holds them (spine_seg.label_bundle).
label-serve: install label-install
	$(PY) -m spine_seg.label_app --studies $(STUDIES) --port $(LABEL_PORT) --venv $(LABEL_VENV) \
		$(if $(filter $(abspath $(MODELS)),$(abspath bundle/models)),,--models $(MODELS) --dataset-json $(DATA)/dataset.json)

test-label: install label-install
	SPINE_SEG_LABEL_VENV=$(LABEL_VENV) $(PY) -m pytest -q -ra tests/test_monailabel.py

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
