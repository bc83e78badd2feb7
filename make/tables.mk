# Ablation tables (docs/ablations.md). Included by the Makefile.
#
#   make tables                                    Tables A, B, C on the CPU proxy (the demo's recipe), seed 0
#                                                  (15.5-30 minutes a seed on 2 cores, committed runs 2026-12-02)
#   make table-margin MARGIN_SPACE=logit           Table A with the margin in logit space (results/margin-logit.*)
#   make table-lambda DATA=cifar100 PAIR='resnet32x4->resnet8x4' SEEDS="0 1 2" DEVICES=8   (quote PAIR: '>' is a
#                                                  redirection in the shell)
#
# A table is configs/ablations/<table>/table.yaml: teacher rows x student rows (method cards) x SEEDS.
# `python -m kd_lightning.ablations run` resolves the whole grid first (any bad value: one error, nothing trains),
# trains each missing run once in the run store under $(RUNS) (rows of several tables that ask for the same training
# share one; kd_lightning/ablations/grid/store.py), JOBS at a time with GPUs / JOBS GPUs each, an interrupted run
# resumed from its last.ckpt, a finished one never re-run, and writes results/<table id>.md/.csv/.png after every
# seed. DRY=1 prints what would run (or be built, or submitted) and runs nothing.

DATA ?= synthetic
PAIR ?=
EPOCHS ?=
DEVICES ?=
MARGIN_SPACE ?= prob
RESULTS ?= results
ARGS ?=
# Arguments for the students only (Table D: a method's setting, which wins over its card's setting for PAIR).
STUDENT_ARGS ?=
ABLATIONS ?= configs/ablations
DRY ?=
# On the CPU proxy two single-threaded runs at once use both cores best; one run per GPU (or GPU set) elsewhere.
JOBS ?= $(if $(filter synthetic,$(DATA)),2,1)

ABLATE := $(PY) -m kd_lightning.ablations
RECIPE = --data='$(DATA)' --pair='$(PAIR)' --epochs='$(EPOCHS)' --devices='$(DEVICES)' --args='$(ARGS)' \
	--student_args='$(STUDENT_ARGS)' --runs='$(RUNS)' --ablations='$(ABLATIONS)'
# LAUNCHER=slurm submits every run as one Slurm job (students after their teachers) and returns; WAIT=1 waits for
# the grid and builds the tables. SLURM_TIME in minutes; SLURM_CPUS is --cpus-per-task and each run's threads;
# SLURM_EXTRA is raw sbatch options ('--qos=high --account=lab'). docs/cluster.md.
LAUNCHER ?= local
SLURM_PARTITION ?=
SLURM_TIME ?= 240
# Empty: the launcher's defaults (grid/slurm.py SlurmSettings): 0 GPUs and 1 CPU per job on the synthetic proxy, else
# 1 GPU and 8 CPUs.
SLURM_GPUS ?=
SLURM_CPUS ?=
SLURM_EXTRA ?=
WAIT ?=
LAUNCH = --launcher=$(LAUNCHER) --slurm_partition='$(SLURM_PARTITION)' --slurm_time=$(SLURM_TIME) \
	$(if $(SLURM_GPUS),--slurm_gpus=$(SLURM_GPUS)) $(if $(SLURM_CPUS),--slurm_cpus=$(SLURM_CPUS)) \
	--slurm_extra='$(SLURM_EXTRA)' $(if $(WAIT),--wait)
TABLE_RUN = $(ABLATE) run $1 --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) --jobs $(JOBS) --out '$(RESULTS)' \
	$(LAUNCH) $(RECIPE) $(if $(DRY),--dry-run)
# The tables whose runs `make tables-status` lists (STATUS=margin for `make table-margin`'s).
STATUS ?= margin contrastive lambda

.PHONY: tables table-margin table-contrastive table-lambda table-students table-build tables-status sweeps proxy proxy-students

table-margin: install ## Table A, margin δ (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS MARGIN_SPACE=prob|logit DRY=1)
	$(call TABLE_RUN,margin)

table-contrastive: install ## Table B, contrastive objective (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,contrastive)

table-lambda: install ## Table C, weight λ with embedding geometry (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,lambda)

table-students: install ## Table D, teacher {plain CE, paper} x every distillation method (same variables)
	$(call TABLE_RUN,students)

tables: install ## Tables A, B and C: each distinct run trained once (10 teachers + students per seed)
	$(call TABLE_RUN,margin contrastive lambda)

# Every seed found under RUNS unless SEEDS is given on the command line; a table with no run at all is skipped.
table-build: install ## Rebuild every table that has runs in RUNS, from every seed found (SEEDS=... to choose)
	$(ABLATE) build all \
		$(if $(filter-out file default,$(origin SEEDS)),--seeds $(SEEDS)) \
		--margin_space $(MARGIN_SPACE) --out '$(RESULTS)' $(RECIPE) $(if $(DRY),--dry-run)

tables-status: install ## One line per run: complete, pending/running (Slurm job id), failed (its log) (STATUS=margin...)
	$(ABLATE) status $(STATUS) --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) $(RECIPE)

sweeps: install ## Regenerate configs/sweeps/<table>.yaml (W&B sweeps) from the table rows
	$(PY) -m kd_lightning.sweeps --write

# The committed proxy (README): the demo and Tables A-C with 5 seeds, seed by seed, in results/proxy-runs/ (only
# results.json, recipe.json and config.yaml of each run are committed; checkpoints and logs are git-ignored). It
# resumes: finished runs are read, not re-run, so it can span sessions.
PROXY_SEEDS ?= 0 1 2 3 4
PROXY_RUNS ?= results/proxy-runs
# The committed tables live in their own folder, so a user's `make tables` (RESULTS=results) never overwrites them.
PROXY_RESULTS ?= results/proxy
proxy: install ## The committed 5-seed proxy: demo + Tables A-C in results/proxy-runs (~2 h on 2 cores; resumes)
	done=""; for seed in $(PROXY_SEEDS); do done="$$done $$seed"; \
		$(PY) experiments/demo.py --seeds $$done --runs '$(PROXY_RUNS)' --jobs $(JOBS) --out '$(PROXY_RESULTS)' && \
		$(ABLATE) run margin contrastive lambda --seeds $$done --jobs $(JOBS) --runs '$(PROXY_RUNS)' \
			--out '$(PROXY_RESULTS)' || exit $$?; \
	done

# Table D on the committed proxy, all student methods, in a run store of its own (results/proxy-runs-students/): the
# proxy's first Table D (5 methods, results/proxy-runs/) was distilled from teachers whose checkpoints were not kept,
# and a teacher trained again on another CPU is not bit-identical, so Table D trains its own plain-CE and paper teachers
# and keeps their last.ckpt in git (a new method's students can then be added on any machine). 3 seeds, 2 h on 2 cores.
PROXY_STUDENT_SEEDS ?= 0 1 2
PROXY_STUDENT_RUNS ?= results/proxy-runs-students
proxy-students: install ## Table D on the committed proxy, seeds 0-2, in results/proxy-runs-students (resumes)
	$(ABLATE) run students --seeds $(PROXY_STUDENT_SEEDS) --jobs $(JOBS) --runs '$(PROXY_STUDENT_RUNS)' \
		--out '$(PROXY_RESULTS)'

# Seeds per row of Tables A-D for 80% power to detect EFFECT accuracy points (the paired t-test the tables report),
# from the spread of the runs in SEEDS_RUNS: the committed proxy unless RUNS is given on the command line.
EFFECT ?= 0.5
SEEDS_RUNS = $(if $(filter command line,$(origin RUNS)),$(RUNS),$(PROXY_RUNS))
.PHONY: seeds-needed
seeds-needed: install ## Seeds per row of Tables A-D to detect EFFECT=0.5 points (runs: the committed proxy, or RUNS=)
	$(ABLATE) seeds-needed all --effect '$(EFFECT)' --data '$(DATA)' --runs '$(SEEDS_RUNS)' --ablations '$(ABLATIONS)'
