"""The W&B sweeps of the ablation tables (docs/ablations.md, "W&B sweep agents"), built on kd_lightning.ablations'
grid: agent.py writes configs/sweeps/<table>.yaml and is the program an agent runs (`python -m kd_lightning.sweeps`,
__main__.py), expand.py lists a sweep file's agent commands offline (`python -m kd_lightning.sweeps.expand`)."""
