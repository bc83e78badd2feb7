"""`python -m kd_lightning.distillation`: the docs' method table, rendered from the method cards."""
from kd_lightning.distillation.registry import method_table_markdown

print(method_table_markdown())
