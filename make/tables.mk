# Ablation tables (docs/ablations.md). Included by the Makefile.
#
#   make table-margin                              the CPU proxy: synthetic set, resnet8 -> resnet8, 6 epochs, seed 0
#   make table-margin MARGIN_SPACE=logit           Table A with the margin in logit space (runs/margin-logit/...)
#   make table-lambda DATA=cifar100 SEEDS="0 1 2" DEVICES=8
#
# Rows are the files configs/ablations/<table>/<row>.yaml. Each (row, seed) is two file targets, the teacher's and the
# student's results.json, under $(RUNS)/<table id>/$(DATA)/<row>/seed<k>/{teacher,student}/: make skips a finished run,
# and a run whose results.json is not "complete" (interrupted, failed, killed) is run again by
# experiments/run_row.py, which resumes it from its last.ckpt. The table is then built from every results.json.

DATA ?= synthetic
PAIR ?=
EPOCHS ?=
DEVICES ?=
MARGIN_SPACE ?= prob
RUNS ?= runs
RESULTS ?= results
ARGS ?=
ABLATIONS ?= configs/ablations
SEEDS ?= 0

TABLES := margin contrastive lambda
# Table A in logit space is its own table (its own runs and results files).
table_id = $(if $(and $(filter margin,$1),$(filter logit,$(MARGIN_SPACE))),margin-logit,$1)
table_rows = $(sort $(basename $(notdir $(wildcard $(ABLATIONS)/$1/*.yaml))))
table_runs = $(foreach r,$(call table_rows,$1),$(foreach s,$(SEEDS),$(foreach stage,teacher student,\
	$(RUNS)/$(call table_id,$1)/$(DATA)/$r/seed$s/$(stage)/results.json)))

RUN_ROW = $(PY) experiments/run_row.py --runs '$(RUNS)' --pair '$(PAIR)' --epochs '$(EPOCHS)' \
	--devices '$(DEVICES)' --args '$(ARGS)' --ablations '$(ABLATIONS)'
BUILD_TABLE = $(PY) experiments/build_table.py $(call table_id,$1) --data '$(DATA)' --seeds $(SEEDS) \
	--runs '$(RUNS)' --out '$(RESULTS)' --ablations '$(ABLATIONS)' --pair '$(PAIR)' --epochs '$(EPOCHS)'

# A results.json that exists but is not "complete" must be remade although the file is there: give it a prerequisite
# that is always newer. (Asked of rows.py only when some of the files exist, so `make help` stays instant.)
TABLE_FILES := $(foreach t,$(TABLES),$(call table_runs,$t))
TABLE_STALE := $(if $(wildcard $(TABLE_FILES)),$(shell $(PY) experiments/rows.py stale $(wildcard $(TABLE_FILES))))
$(TABLE_STALE): FORCE
FORCE:

# A run's results.json says how far it got: never delete it when make is interrupted.
.PRECIOUS: $(RUNS)/%/teacher/results.json $(RUNS)/%/student/results.json

# Exit status 3 = the run failed and its results.json says so: go on with the other rows, the table shows it.
$(RUNS)/%/teacher/results.json:
	$(RUN_ROW) --stage teacher '$*' || test $$? -eq 3

# Order-only: the student needs its teacher finished, not newer.
$(RUNS)/%/student/results.json: | $(RUNS)/%/teacher/results.json
	$(RUN_ROW) --stage student '$*' || test $$? -eq 3

.PHONY: tables table-margin table-contrastive table-lambda sweeps FORCE

table-margin: $(call table_runs,margin) ## Table A, margin δ (DATA PAIR EPOCHS SEEDS DEVICES MARGIN_SPACE=prob|logit)
	$(call BUILD_TABLE,margin)

table-contrastive: $(call table_runs,contrastive) ## Table B, contrastive objective (DATA PAIR EPOCHS SEEDS DEVICES)
	$(call BUILD_TABLE,contrastive)

table-lambda: $(call table_runs,lambda) ## Table C, weight λ with embedding geometry (DATA PAIR EPOCHS SEEDS DEVICES)
	$(call BUILD_TABLE,lambda)

tables: table-margin table-contrastive table-lambda ## All three ablation tables

sweeps: ## Regenerate configs/sweeps/<table>.yaml (W&B sweeps) from the table rows
	$(PY) experiments/sweep.py --write
