# deftmed: the two commands a user needs are `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deftmed-installed
WEIGHTS := deftmed/weights
RUNS   ?= runs
# Threads per training process: 1 keeps a 2-core machine usable and avoids OpenMP
# oversubscription stalls when anything else runs; raise it on a dedicated machine.
TRAIN_THREADS ?= 1
PRIOR_THREADS ?= 2

.PHONY: setup demo test bench weights weights-prior weights-deft weights-prior-anatomy \
	weights-prior-natural weights-natural clean

setup: $(STAMP)

# Create the venv when missing; install torch==2.13.0 (a CPU build on this machine's disk) only
# when no torch is importable, so an existing (e.g. CUDA) torch is kept; then deftmed itself.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/deftmed demo --out demo_output

test: setup
	$(PY) -m pytest -q

# `make bench SECTIONS=physics,prior BENCH_ARGS=--quick` re-runs parts; BENCHMARKS.md is
# assembled from all fragments in benchmarks/.
SECTIONS ?=
BENCH_ARGS ?=
bench: setup
	$(PY) -m deftmed.evaluation.benchmarks --out BENCHMARKS.md $(if $(SECTIONS),--sections $(SECTIONS)) $(BENCH_ARGS)

# Training the shipped weights (background jobs of an hour or more on 2 CPU cores).
PRIOR_CMD = $(VENV)/bin/deftmed train-prior --data ellipses --image-size 64 \
	--channels 32,48,64,96 --attention-levels 0,0,0,1 --prediction v --steps 3000 --batch-size 16 \
	--lr 3e-4 \
	--warmup 200 --ema 0.999 --seed 0 --checkpoint-every 250 --sample-every 1000 \
	--out $(RUNS)/prior-ellipses64

weights-prior: setup
	OMP_NUM_THREADS=$(PRIOR_THREADS) $(PRIOR_CMD) --resume
	cp $(RUNS)/prior-ellipses64/prior.safetensors $(WEIGHTS)/prior-ellipses64.safetensors

DEFT_STEPS ?= 1200
# the prior is the protocol's (`weights.prior`)
DEFT_CMD = $(VENV)/bin/deftmed finetune \
	--steps $(DEFT_STEPS) --batch-size 16 --lr 1e-3 --warmup 100 --ema 0.999 --seed 0 \
	--checkpoint-every 250 --val-every 500 --val-n 8 --val-steps 100

$(RUNS)/deft-%.safetensors: setup
	OMP_NUM_THREADS=$(TRAIN_THREADS) $(DEFT_CMD) --protocol $* --out $@ --resume

weights-deft-%: $(RUNS)/deft-%.safetensors
	cp $< $(WEIGHTS)/deft-$*.safetensors

# The two h-transforms train in parallel (one core each).
weights-deft:
	$(MAKE) -j2 weights-deft-ellipses64-sv20 weights-deft-fan64-sv24

.PRECIOUS: $(RUNS)/deft-%.safetensors $(RUNS)/deft-natural64-%.safetensors

# The anatomical-phantom prior (warm-started from the ellipse prior) and its h-transform
# (`anatomy64-sv20`, issue #6); the RGB prior of the natural-image tasks and one h per task.
ANATOMY_PRIOR_CMD = $(VENV)/bin/deftmed train-prior --data anatomy --image-size 64 \
	--init $(WEIGHTS)/prior-ellipses64.safetensors --steps 1500 --batch-size 16 --lr 2e-4 \
	--warmup 100 --ema 0.999 --seed 0 --checkpoint-every 250 --sample-every 500 \
	--out $(RUNS)/prior-anatomy64

weights-prior-anatomy: setup
	OMP_NUM_THREADS=$(PRIOR_THREADS) $(ANATOMY_PRIOR_CMD) --resume
	cp $(RUNS)/prior-anatomy64/prior.safetensors $(WEIGHTS)/prior-anatomy64.safetensors

NATURAL_PRIOR_CMD = $(VENV)/bin/deftmed train-prior --data natural --image-size 64 \
	--channels 32,48,64,96 --attention-levels 0,0,0,1 --prediction v --steps 1800 \
	--batch-size 16 --lr 3e-4 --warmup 100 --ema 0.999 --seed 0 --checkpoint-every 300 \
	--sample-every 600 --out $(RUNS)/prior-natural64

weights-prior-natural: setup
	OMP_NUM_THREADS=$(PRIOR_THREADS) $(NATURAL_PRIOR_CMD) --resume
	cp $(RUNS)/prior-natural64/prior.safetensors $(WEIGHTS)/prior-natural64.safetensors

NATURAL_STEPS ?= 600
$(RUNS)/deft-natural64-%.safetensors: setup
	OMP_NUM_THREADS=$(TRAIN_THREADS) $(VENV)/bin/deftmed finetune --protocol natural64-$* \
	--steps $(NATURAL_STEPS) --batch-size 16 --lr 1e-3 --warmup 50 --ema 0.999 --seed 0 \
	--checkpoint-every 200 --val-every 300 --val-n 8 --val-steps 50 --out $@ --resume

weights-deft-natural64-%: $(RUNS)/deft-natural64-%.safetensors
	cp $< $(WEIGHTS)/deft-natural64-$*.safetensors

weights-natural: weights-prior-natural
	$(MAKE) -j2 weights-deft-natural64-inpaint weights-deft-natural64-sr4 \
	weights-deft-natural64-hdr weights-deft-natural64-phase weights-deft-natural64-nlblur

weights: weights-prior weights-deft weights-prior-anatomy weights-deft-anatomy64-sv20 weights-natural

clean:
	rm -rf demo_output results .pytest_cache
