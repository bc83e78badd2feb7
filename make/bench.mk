# Speed benchmark targets (docs/speed.md); included by the Makefile.
.PHONY: bench bench-smoke bench-wheels

bench: install ## Speed benchmark: fast path vs raw-PyTorch limit vs classic path (GPU; CPU runs the smoke version)
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) experiments/benchmark.py; \
	else \
		echo "no CUDA device: running the CPU smoke version (tiny, says nothing about speed)"; \
		$(PY) experiments/benchmark.py --smoke; \
	fi

bench-smoke: install ## The benchmark's tiny CPU version (what CI runs): checks every path runs, writes runs/bench/
	$(PY) experiments/benchmark.py --smoke

# Exactly what the device image lacks among the project's dependencies (its image has torch 2.11.0, torchvision
# 0.26.0, pytorch-lightning 2.6.6, torchmetrics 1.9.0, scipy, filelock, cloudpickle, rich, matplotlib, pyyaml,
# pillow): jsonargparse with the two packages its signatures need, and submitit. No wandb: nothing there builds the
# W&B logger. Wheels for its Python 3.12, carried with `carry=[".whl"]` and installed by experiments/gpu_check.sh,
# which installs the project itself with --no-deps.
BENCH_WHEELS := jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 submitit==1.5.4
bench-wheels: ## Download the wheels experiments/gpu_check.sh installs on the GPU machine into .whl/ (git-ignored)
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(BENCH_WHEELS)
