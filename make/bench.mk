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

# For a GPU machine without a package index whose Python already holds torch 2.11, torchvision 0.26, Lightning 2.6.6,
# torchmetrics, scipy, filelock, cloudpickle, rich, matplotlib, pyyaml and pillow (an NVIDIA PyTorch image): the rest
# of the project's dependencies, jsonargparse with the two packages its signatures need and submitit, as Python 3.12
# wheels in .whl/. No wandb: the GPU check never builds the W&B logger. Copy .whl/ with the checkout;
# experiments/gpu_check.sh installs them and the project itself with --no-deps.
BENCH_WHEELS := jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 submitit==1.5.4
bench-wheels: ## Download the wheels experiments/gpu_check.sh installs on the GPU machine into .whl/ (git-ignored)
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(BENCH_WHEELS)
