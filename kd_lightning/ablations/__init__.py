"""The ablation tables as a library: rows (rows.py), which run a row is (runs.py), how a run becomes a
`kd-lightning fit` (recipe.py), the runner (runner.py), the table builder (collect.py, table.py, plot.py, stats.py)
and the W&B sweeps (sweep.py, sweep_expand.py). `python -m kd_lightning.ablations --help` runs them."""
