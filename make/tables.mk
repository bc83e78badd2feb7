# Ablation tables (docs/ablations.md). Included by the Makefile.
#
#   make tables                                    Tables A, B, C on the CPU proxy (the demo's recipe), seed 0
#   make table-margin MARGIN_SPACE=logit           Table A with the margin in logit space (results/margin-logit.*)
#   make table-lambda DATA=cifar100 SEEDS="0 1 2" DEVICES=8
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
RECIPE = --data '$(DATA)' --pair '$(PAIR)' --epochs '$(EPOCHS)' --devices '$(DEVICES)' --args '$(ARGS)' \
	--runs '$(RUNS)' --ablations '$(ABLATIONS)'
TABLE_RUN = $(ABLATE) run $1 --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) --jobs $(JOBS) --out '$(RESULTS)' $(RECIPE)

.PHONY: tables table-margin table-contrastive table-lambda table-students table-build sweeps proxy proxy-students

table-margin: install ## Table A, margin δ (DATA PAIR EPOCHS SEEDS DEVICES JOBS MARGIN_SPACE=prob|logit)
	$(call TABLE_RUN,margin)

table-contrastive: install ## Table B, contrastive objective (DATA PAIR EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,contrastive)

table-lambda: install ## Table C, weight λ with embedding geometry (DATA PAIR EPOCHS SEEDS DEVICES JOBS)
	$(call TABLE_RUN,lambda)

table-students: install ## Table D, teacher {plain CE, paper} x student {KD, DKD, DIST, CRD, KD+RKD} (same variables)
	$(call TABLE_RUN,students)

tables: install ## Tables A, B and C: each distinct run trained once (10 teachers + students per seed)
	$(call TABLE_RUN,margin contrastive lambda)

table-build: install ## Rebuild the tables from the runs there are (missing runs show as missing)
	$(ABLATE) build margin contrastive lambda students --seeds $(SEEDS) --margin_space $(MARGIN_SPACE) \
		--out '$(RESULTS)' $(RECIPE)

sweeps: install ## Regenerate configs/sweeps/<table>.yaml (W&B sweeps) from the table rows
	$(ABLATE) sweep --write

# The committed proxy (README): the demo and Tables A-C with 5 seeds, seed by seed, in results/proxy-runs/ (only
# results.json, recipe.json and config.yaml of each run are committed; checkpoints and logs are git-ignored). It
# resumes: finished runs are read, not re-run, so it can span sessions.
PROXY_SEEDS ?= 0 1 2 3 4
PROXY_RUNS ?= results/proxy-runs
# The committed tables live in their own folder, so a user's `make tables` (RESULTS=results) never overwrites them.
PROXY_RESULTS ?= results/proxy
proxy: install ## The committed 5-seed proxy: demo + Tables A-C in results/proxy-runs (~1.5 h on 2 cores; resumes)
	done=""; for seed in $(PROXY_SEEDS); do done="$$done $$seed"; \
		$(PY) experiments/demo.py --seeds $$done --runs '$(PROXY_RUNS)' --jobs $(JOBS) --out '$(PROXY_RESULTS)' && \
		$(ABLATE) run margin contrastive lambda --seeds $$done --jobs $(JOBS) --runs '$(PROXY_RUNS)' \
			--out '$(PROXY_RESULTS)' || exit $$?; \
	done

# Table D on the committed proxy: its teachers are the proxy's plain-CE and paper runs (and its KD row their KD
# students), so only the other student methods are trained; 3 seeds (about 10 minutes on 2 cores).
PROXY_STUDENT_SEEDS ?= 0 1 2
proxy-students: install ## Table D on the committed proxy, seeds 0-2, in results/proxy-runs (resumes)
	$(ABLATE) run students --seeds $(PROXY_STUDENT_SEEDS) --jobs $(JOBS) --runs '$(PROXY_RUNS)' --out '$(PROXY_RESULTS)'
