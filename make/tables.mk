# Ablation tables (docs/ablations.md). Included by the Makefile.
#
#   make tables                                    Tables A, B, C on the CPU proxy (the demo's recipe), seed 0
#                                                  (15.5-30 minutes a seed on 2 cores, committed runs 2026-12-02)
#   make table-margin MARGIN_SPACE=logit           Table A with the margin in logit space (results/margin-logit.*)
#   make table-lambda DATA=cifar100 PAIR='resnet32x4->resnet8x4' SEEDS="0 1 2" DEVICES=8   (quote PAIR: '>' is a
#                                                  redirection in the shell)
#
# Rows are the files configs/ablations/<table>/<row>.yaml. `python -m kd_lightning.ablations run` resolves every row
# to its run (rows of several tables that ask for the same training share one: kd_lightning/ablations/runs.py), trains
# each missing run once under $(RUNS)/<data>/<teacher run>/seed<k>/{teacher,student}/ (an interrupted run resumes
# from its last.ckpt, a finished one is never re-run), JOBS at a time, and writes results/<table id>.md/.csv/.png
# after every seed.

DATA ?= synthetic
PAIR ?=
EPOCHS ?=
DEVICES ?=
MARGIN_SPACE ?= prob
RESULTS ?= results
ARGS ?=
ABLATIONS ?= configs/ablations
# On the CPU proxy two single-threaded runs at once use both cores best; one run per GPU (or GPU set) elsewhere.
JOBS ?= $(if $(filter synthetic,$(DATA)),2,1)

ABLATE := $(PY) -m kd_lightning.ablations
RECIPE = --data='$(DATA)' --pair='$(PAIR)' --epochs='$(EPOCHS)' --devices='$(DEVICES)' --args='$(ARGS)' \
	--runs='$(RUNS)' --ablations='$(ABLATIONS)'
# LAUNCHER=slurm submits every run as one Slurm job (students after their teachers) and returns; WAIT=1 waits for
# the grid and builds the tables. SLURM_TIME in minutes; SLURM_CPUS is --cpus-per-task and each run's threads;
# SLURM_EXTRA is raw sbatch options ('--qos=high --account=lab'). docs/cluster.md.
LAUNCHER ?= local
SLURM_PARTITION ?=
SLURM_TIME ?= 240
SLURM_GPUS ?= $(if $(filter synthetic,$(DATA)),0,1)
SLURM_CPUS ?= $(if $(filter synthetic,$(DATA)),1,8)
SLURM_EXTRA ?=
WAIT ?=
LAUNCH = --launcher=$(LAUNCHER) --slurm_partition='$(SLURM_PARTITION)' --slurm_time=$(SLURM_TIME) \
	--slurm_gpus=$(SLURM_GPUS) --slurm_cpus=$(SLURM_CPUS) --slurm_extra='$(SLURM_EXTRA)' $(if $(WAIT),--wait)
TABLE_RUN = $(ABLATE) run $1 --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) --jobs $(JOBS) --out '$(RESULTS)' \
	$(LAUNCH) $(RECIPE)
# The tables whose runs `make tables-status` lists (STATUS=margin for `make table-margin`'s).
STATUS ?= margin contrastive lambda

.PHONY: tables table-margin table-contrastive table-lambda table-students table-build tables-status sweeps proxy proxy-students

table-margin: install ## Table A, margin δ (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS MARGIN_SPACE=prob|logit)
	$(call TABLE_RUN,margin)

table-contrastive: install ## Table B, contrastive objective (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,contrastive)

table-lambda: install ## Table C, weight λ with embedding geometry (DATA PAIR='T->S' EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,lambda)

table-students: install ## Table D, teacher {plain CE, paper} x student {KD, DKD, DIST, CRD, KD+RKD} (same variables)
	$(call TABLE_RUN,students)

tables: install ## Tables A, B and C: each distinct run trained once (10 teachers + students per seed)
	$(call TABLE_RUN,margin contrastive lambda)

# Every seed found under RUNS unless SEEDS is given on the command line; a table with no run at all is skipped.
table-build: install ## Rebuild every table that has runs in RUNS, from every seed found (SEEDS=... to choose)
	$(ABLATE) build margin contrastive lambda students \
		$(if $(filter-out file default,$(origin SEEDS)),--seeds $(SEEDS)) \
		--margin_space $(MARGIN_SPACE) --out '$(RESULTS)' $(RECIPE)

tables-status: install ## One line per run: complete, pending/running (Slurm job id), failed (its log) (STATUS=margin...)
	$(ABLATE) status $(STATUS) --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) $(RECIPE)

sweeps: install ## Regenerate configs/sweeps/<table>.yaml (W&B sweeps) from the table rows
	$(ABLATE) sweep --write

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

# Table D on the committed proxy: its teachers are the proxy's plain-CE and paper runs (and its KD row their KD
# students), so only the other student methods are trained; 3 seeds (27 minutes on the 2-core Xeon, 2026-12-02: half
# the summed wall_seconds of its 24 runs in results/proxy-runs).
PROXY_STUDENT_SEEDS ?= 0 1 2
proxy-students: install ## Table D on the committed proxy, seeds 0-2, in results/proxy-runs (resumes)
	$(ABLATE) run students --seeds $(PROXY_STUDENT_SEEDS) --jobs $(JOBS) --runs '$(PROXY_RUNS)' --out '$(PROXY_RESULTS)'

# Seeds per row of Tables A-D for 80% power to detect EFFECT accuracy points (the paired t-test the tables report),
# from the spread of the runs in SEEDS_RUNS: the committed proxy unless RUNS is given on the command line.
EFFECT ?= 0.5
SEEDS_RUNS = $(if $(filter command line,$(origin RUNS)),$(RUNS),$(PROXY_RUNS))
.PHONY: seeds-needed
seeds-needed: install ## Seeds per row of Tables A-D to detect EFFECT=0.5 points (runs: the committed proxy, or RUNS=)
	$(ABLATE) seeds-needed all --effect '$(EFFECT)' --data '$(DATA)' --runs '$(SEEDS_RUNS)' --ablations '$(ABLATIONS)'
