"""The ablation tables as a library: the grid (grid/: the tables' manifests, the recipe, which run a row is, the run
store, the local and Slurm launchers), the reports (report/: collect, statistics, tables, plot) and the W&B sweeps
(sweeps/). `python -m kd_lightning.ablations --help` runs them; docs/ablations.md explains them."""
