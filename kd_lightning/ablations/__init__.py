"""The ablation tables as a library: the grid (grid/: the tables' manifests, the recipe, which run a row is, the run
store, the local and Slurm launchers) and the reports (report/: collect, tables, plot, seeds needed). The W&B sweeps
are kd_lightning/sweeps/. `python -m kd_lightning.ablations --help` runs them; docs/ablations.md explains them."""
