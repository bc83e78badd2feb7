"""`python -m kd_lightning.sweeps`: write the W&B sweep files of the tables (`--write`), or run one agent's row and
seed (the `command` of those files; `wandb agent` starts it). See agent.py and docs/ablations.md."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from kd_lightning.ablations.grid.recipe import add_recipe_options
from kd_lightning.ablations.grid.spec import MARGIN_SPACES
from kd_lightning.error_report import run_command
from kd_lightning.sweeps import agent


def parser() -> argparse.ArgumentParser:
    # The agent's swept values (`--model.KEY=VALUE`, `--student=dkd`) are not options: no abbreviations.
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.sweeps", description=agent.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_recipe_options(parser)
    parser.add_argument("--write", action="store_true", help="write configs/sweeps/<table>.yaml from the tables "
                        "(with --data, --pair, --epochs, --devices, --args fixed in their command)")
    parser.add_argument("--table", help="the table of the agent's run")
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_argument("--print_config", nargs="?", const="both", choices=("teacher", "student", "both"),
                        help="print the teacher's and the student's configs (or one of them), run nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--write: the seed_everything values")
    parser.add_argument("--margin_space", default="prob", choices=MARGIN_SPACES,
                        help="prob | logit (tables that declare margin_space)")
    parser.add_argument("--out", default=str(agent.SWEEPS), help="--write: the folder of the sweep files")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    ns, swept = parser().parse_known_args(sys.argv[1:] if argv is None else argv)  # the agent's values follow
    return run_command("sweep", lambda: agent.run(ns, swept))


if __name__ == "__main__":
    sys.exit(main())
