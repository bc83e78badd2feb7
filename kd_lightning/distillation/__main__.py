"""`python -m kd_lightning.distillation [--readme]`: the docs' method table (or the README's compact one), rendered
from the method cards."""
import sys

from kd_lightning.distillation.registry import method_table_markdown, readme_method_table

print(readme_method_table() if "--readme" in sys.argv[1:] else method_table_markdown())
