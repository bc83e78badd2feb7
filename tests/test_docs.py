"""The docs are tested: every command in README.md and docs/*.md works as written, as far as it can without training.

Collected: each shell command of a code block (indented or fenced, `\\` continuations joined, `# comments` dropped)
whose first word is a program of ours or a known launcher, and each inline `code` span in prose that starts with
`kd-lightning`, `make ` or `python -m kd_lightning`, or is a dotted flag (`--model.gate_delta=0.1`). Checked:

- `kd-lightning ...`, `python -m kd_lightning ...` (also after `srun` / `torchrun ... -m`): parsed in-process with
  `--print_config` appended (jsonargparse validates every key, type and --config file, nothing is instantiated or
  trained; in-process because one CLI subprocess costs ~10 s here), or run with `--help` forms as written (every
  `--model.help X` in a fresh process, as a user's shell runs it);
- `make X ...`: `make -n` exits 0, and the ablations command it would run passes with `--dry-run`;
- `python -m kd_lightning.ablations run|build ...`: with `--dry-run`; `python -m kd_lightning.sweeps.expand` as
  written; `python -m kd_lightning.sweeps --write` into a temporary folder;
- a dotted flag in prose: appended to the teacher's, else the student's, base command and parsed;
- every repository path named in the docs (`configs/...`, `docs/...`, `kd_lightning/...`, links) exists;
- every default in docs/configuration.md's argument tables equals the class signature's, and `Name(key=value)` defaults in
  prose equal the signature of that class.

Commands that need a GPU, a data set or a cluster are still parsed: `--print_config` resolves flags without a device
or data (`--trainer.accelerator=gpu`, `--data.download=true` only parse), and `<!-- needs: gpu -->` before a block or
`# needs: ...` after a command marks what cannot run here. Placeholders (`...`, `<x>`, `$VAR`, `[--optional]`) are
filled: `--config ...` by the recipe's base configs, `=...` by a dummy path, `[...]` is unwrapped.
The docs must also name nothing a user does not have (FORBIDDEN below).
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
import shlex
import subprocess
import sys
from unittest import mock
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Words a code block's command may start with; only ours are checked, the rest (W&B, SLURM, shell) are named so a
#: new kind of command fails here until someone decides how to check it.
OURS = {"kd-lightning", ".venv/bin/kd-lightning", "python", ".venv/bin/python", "make", "srun", "torchrun"}
NOT_OURS = {"wandb", "for", "done", "sbatch", "source", "git", "cd", "export", "pip", ".venv/bin/pip", "squeue",
            "scancel", "bash", "device", "ls", "cat", "cp", "mkdir", "tensorboard"}
#: Text about the project's own tooling, not the product.
FORBIDDEN = ["../shared", "shared/METHOD", "shared/DESIGN", "DESIGN.md", "DEVELOPERS.md", "device tool", "issues show", "the lead",
             "session", "guide file", "METHOD.md"]
BASE_TEACHER = ["--config", "configs/trainer/default.yaml", "--config", "configs/data/cifar100.yaml",
                "--config", "configs/teacher/resnet32x4.yaml"]
BASE_STUDENT = ["--config", "configs/trainer/default.yaml", "--config", "configs/data/cifar100.yaml",
                "--config", "configs/student/resnet8x4.yaml", "--model.teacher_checkpoint=teacher.ckpt"]


@dataclass
class Command:
    doc: str
    line: int
    text: str
    needs: str = ""

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}" + (f"  (needs {self.needs})" if self.needs else "")


def _blocks(text: str) -> list[tuple[int, list[str], str]]:
    """(first line number, lines, needs-mark) of every indented or fenced (non-YAML) code block."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        needs = ""
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = re.match(r"<!--\s*needs:\s*(.*?)\s*-->", prev.strip())
        if mark:
            needs = mark.group(1)
        if line.startswith("```"):
            lang, j = line[3:].strip(), i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if lang in ("", "bash", "sh", "shell", "console"):
                blocks.append((i + 2, lines[i + 1:j], needs))
            i = j + 1
            continue
        starts_block = line.startswith("    ") and (i == 0 or not lines[i - 1].strip())
        if starts_block and not re.match(r"\s*([-*|]|\d+\.)", line):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            blocks.append((i + 1, [ln[4:] for ln in lines[i:j]], needs))
            i = j
            continue
        i += 1
    return blocks


def _strip_comment(line: str) -> tuple[str, str]:
    needs = re.search(r"#\s*needs:\s*(.*)$", line)
    code = re.sub(r"(^|\s)#.*$", "", line)
    return code.rstrip(), needs.group(1).strip() if needs else ""


def block_commands() -> list[Command]:
    out = []
    for doc in DOCS:
        for first, lines, needs in _blocks(doc.read_text()):
            joined, start = "", None
            for k, raw in enumerate(lines):
                if raw.startswith("#!") or raw.startswith("#SBATCH"):
                    continue
                code, mark = _strip_comment(raw)
                if not code.strip() and not joined:
                    continue
                start = first + k if not joined else start
                joined += " " + code.strip().rstrip("\\") if code.endswith("\\") else " " + code.strip()
                if code.endswith("\\"):
                    continue
                text = joined.strip()
                joined = ""
                if text:
                    out.append(Command(doc.relative_to(ROOT).as_posix(), start, text, mark or needs))
    return out


def _program(text: str) -> str:
    words = [w for w in text.split() if not re.match(r"^[A-Z_]+=", w)]  # CUDA_VISIBLE_DEVICES=$i prefix
    return words[0] if words else ""


#: Docs whose commands need a user's own package on PYTHONPATH: tests/test_extending.py runs them, as written.
RUN_ELSEWHERE = {"docs/extending.md"}


def code_commands() -> list[Command]:
    """Block commands whose first word is a program: listings (folder trees, output lines) are not commands."""
    return [c for c in block_commands() if _program(c.text) in OURS | NOT_OURS and c.doc not in RUN_ELSEWHERE]


def prose_spans() -> list[Command]:
    out = []
    for doc in (d for d in DOCS if d.relative_to(ROOT).as_posix() not in RUN_ELSEWHERE):
        in_fence = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_fence = not in_fence
            if in_fence or line.startswith("    "):
                continue
            for span in re.findall(r"`([^`]+)`", line):
                out.append(Command(doc.relative_to(ROOT).as_posix(), n, span))
    return out


# --- the checks -----------------------------------------------------------------------------------------------


def _fill(words: list[str]) -> list[str]:
    """Placeholders a reader fills in: `--config ...` or `...` -> the base configs the command lacks (trainer, data,
    and a teacher unless it names a student), `=...` -> a dummy path, `[--x]` -> --x."""
    partial = "..." in words
    out = []
    for k, w in enumerate(words):
        if w == "..." or (w == "--config" and k + 1 < len(words) and words[k + 1] == "..."):
            continue
        w = w[1:-1] if w.startswith("[") and w.endswith("]") else w
        out.append(re.sub(r"=\.\.\.$", "=placeholder.ckpt", w))
    if partial:
        student = any(w.startswith("configs/student/") for w in out)
        base = BASE_TEACHER[:4] if any(w.startswith(("configs/teacher/", "configs/student/")) for w in out) \
            else BASE_TEACHER
        if student and not any(w.startswith("--model.teacher_checkpoint") for w in out):
            base = [*base, "--model.teacher_checkpoint=placeholder.ckpt"]
        out[1:1] = base
    return out


def kd_argv(text: str) -> list[str] | None:
    """The kd-lightning argv of a command (after `srun`, `torchrun ... -m kd_lightning`, env assignments)."""
    words = shlex.split(re.sub(r"\$\{?\w+\}?", "0", text))
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    if words and words[0] == "srun":
        words = words[1:]
    if words and words[0] == "torchrun":
        words = words[words.index("-m") + 1:]
        words = ["kd-lightning", *words[1:]] if words[0] == "kd_lightning" else words
    if words[:3] in (["python", "-m", "kd_lightning"], [".venv/bin/python", "-m", "kd_lightning"]):
        words = ["kd-lightning", *words[3:]]
    if words and words[0] in ("kd-lightning", ".venv/bin/kd-lightning"):
        return _fill(words[1:]) if len(words) > 1 else ["--help"]  # the program's name alone: its help
    return None


def module_argv(text: str, module: str = "kd_lightning.ablations") -> list[str] | None:
    """The arguments after `-m MODULE` in a command, or None when it does not run that module."""
    words = shlex.split(text)
    for k in range(len(words) - 2):
        if words[k + 1:k + 3] == ["-m", module]:
            return words[k + 3:]
    return None


def run_in_process(main, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    # sys.argv as a shell would set it: LightningCLI warns when it sees pytest's arguments beside args=.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), mock.patch.object(sys, "argv", ["kd"]):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return int(code or 0), out.getvalue()


def kd_main(argv: list[str]) -> int:
    from kd_lightning.cli import KDLightningCLI

    KDLightningCLI(args=argv)
    return 0


def check_kd(argv: list[str]) -> tuple[int, str]:
    """`--help` as written; `--model.help X` as written in a fresh process (in this one the test's own imports make
    short class names resolve that a user's shell would not); anything else with --print_config (parses, validates,
    runs nothing)."""
    if any(w.endswith(".help") for w in argv):
        proc = subprocess.run([sys.executable, "-m", "kd_lightning", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stdout + proc.stderr
    if not any(w in ("--help", "-h") for w in argv):
        argv = [*argv, "--print_config"]
    return run_in_process(kd_main, argv)


def _alternatives(text: str) -> list[str]:
    """`kd-lightning validate|test --help` -> one command per alternative."""
    words = text.split()
    for k, w in enumerate(words):
        if "|" in w and not w.startswith("-") and "=" not in w:
            return [" ".join([*words[:k], alt, *words[k + 1:]]) for alt in w.split("|")]
    return [text]


_DRY_RUNS: dict[tuple[str, ...], tuple[int, str]] = {}


def check(cmd: Command, tmp: Path) -> str:
    """'' when the command works as far as it can without training, else what failed."""
    from kd_lightning.ablations.__main__ import main as ablations_main
    from kd_lightning.sweeps import expand
    from kd_lightning.sweeps.__main__ import main as sweeps_main

    for text in _alternatives(cmd.text):
        abl = module_argv(text)
        sweeps = module_argv(text, "kd_lightning.sweeps")
        files = module_argv(text, "kd_lightning.sweeps.expand")
        if sweeps is not None:
            if "--write" in sweeps:
                sweeps = [w for w in sweeps if not w.startswith("--out")] + [f"--out={tmp / 'sweeps'}"]
            elif "--help" not in sweeps:
                continue  # the W&B agent's program: run by `wandb agent`; test_sweeps.py checks its commands
            code, out = run_in_process(sweeps_main, sweeps)
        elif files is not None:
            code, out = run_in_process(expand.main, files)
        elif abl is not None:
            if len(abl) == 1:  # `python -m kd_lightning.ablations run`: the subcommand named, its help
                abl = [*abl, "--help"]
            elif abl[:1] in (["run"], ["build"]) and "--help" not in abl:
                abl = [*abl, "--dry-run"]
            code, out = run_in_process(ablations_main, abl)
            if abl[0] == "build" and code == 1 and "nothing built" in out:
                code = 0  # parsed and resolved every row; a clean clone has no runs to build from
        elif _program(text) == "make":
            proc = subprocess.run(["make", "-n", *shlex.split(text)[1:]], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60)
            code, out = proc.returncode, proc.stdout + proc.stderr
            lines = [ln for ln in proc.stdout.replace("\\\n", " ").splitlines() if "-m kd_lightning.ablations " in ln]
            # $seed of a shell loop (make proxy) has no value before the shell runs it: make -n is all there is.
            abl = module_argv(lines[0]) if code == 0 and len(lines) == 1 and "$" not in lines[0] else None
            if abl and abl[0] in ("run", "build"):  # and what make would run, as a dry run: its recipe resolves
                key = tuple(abl)
                if key not in _DRY_RUNS:  # many docs name the same command
                    _DRY_RUNS[key] = run_in_process(ablations_main, [*abl, "--dry-run"])
                code, out = _DRY_RUNS[key]
                if abl[0] == "build" and code == 1 and "nothing built" in out:
                    code = 0
        else:
            argv = kd_argv(text)
            if argv is None:
                continue
            code, out = check_kd(argv)
        if code != 0:
            return f"{cmd}\n  -> exit {code}: {out[-800:]}"
    return ""


def test_code_block_commands_work_as_written(tmp_path: Path):
    commands = code_commands()
    assert len(commands) > 20, "the collector found almost no commands: is it broken?"
    failures = [f for f in (check(c, tmp_path) for c in commands if _program(c.text) in OURS) if f]
    assert not failures, "\n".join(failures)


def required_needs(text: str) -> set[str]:
    """What a command needs beyond this CPU machine, read from its arguments: a GPU (the fast overlays, an explicit
    gpu accelerator, several devices without accelerator=cpu), a data set on disk (CIFAR-100 or Tiny-ImageNet without
    download=true), a cluster (srun, torchrun over several nodes, W&B agents)."""
    needs = set()
    devices = re.search(r"(?:--trainer\.devices=|DEVICES=)(\d+)", text)
    if "configs/fast/" in text or "accelerator=gpu" in text or (
            devices and int(devices.group(1)) > 1 and "accelerator=cpu" not in text):
        needs.add("gpu")
    if "CUDA_VISIBLE_DEVICES" in text:
        needs.add("gpu")
    trains = re.search(r"(^|\s)(kd-lightning|-m kd_lightning) (fit|validate|test)\b"
                       r"|^make (tables|table-(margin|contrastive|lambda|students))(\s|$)", text)
    if trains and re.search(r"cifar100|tiny_imagenet", text) and "download=true" not in text:
        needs.add("data")
    if re.search(r"^srun |--nnodes=[2-9]|num_nodes=[2-9]|LAUNCHER=slurm", text):
        needs.add("cluster")
    return needs


def test_commands_that_need_more_than_a_cpu_are_marked():
    """`<!-- needs: gpu, data -->` before the block or `# needs: ...` after the command says what a reader must have;
    the command is still parsed by the tests above."""
    unmarked = []
    for c in code_commands():
        lacking = required_needs(c.text) - set(re.split(r"[,\s]+", c.needs))
        if lacking:
            unmarked.append(f"{c}: mark it `needs: {', '.join(sorted(lacking))}`")
    assert not unmarked, "\n".join(unmarked)


def _is_prose_command(span: str) -> bool:
    return span.startswith(("kd-lightning ", "make ", "python -m kd_lightning", ".venv/bin/kd-lightning "))


def test_prose_commands_work_as_written(tmp_path: Path):
    spans = [c for c in prose_spans() if _is_prose_command(c.text) and "<" not in c.text]
    assert len(spans) > 10
    failures = [f for f in (check(c, tmp_path) for c in spans) if f]
    assert not failures, "\n".join(failures)


def _dotted_flags() -> list[Command]:
    return [c for c in prose_spans() if re.match(r"^--[a-z_]+\.[a-z_.]+(=|\s|$)", c.text)
            and not c.text.startswith("--dotted.")]  # `--dotted.key=value`: the syntax, not a flag


def _key_exists(flag: str) -> bool:
    """A dotted flag named without a value (`--model.teacher_checkpoint`): its first key is a constructor argument
    of a module, a datamodule or the Trainer (or `init_args` of one)."""
    from pytorch_lightning import Trainer

    from kd_lightning.data import CIFAR100DataModule, SyntheticDataModule, TinyImageNetDataModule
    from kd_lightning.modules import StudentModule, TeacherModule

    section, *keys = flag.lstrip("-").split(".")
    keys = [k for k in keys if k != "init_args"]
    owners = {"model": (TeacherModule, StudentModule), "trainer": (Trainer,),
              "data": (CIFAR100DataModule, TinyImageNetDataModule, SyntheticDataModule)}.get(section, ())
    return bool(keys) and any(keys[0] in inspect.signature(c).parameters for c in owners)


def test_prose_flags_resolve():
    """Each `--dotted.flag=value` in prose parses on the teacher's or the student's base command; one without a
    value names a constructor argument."""
    flags = _dotted_flags()
    assert len(flags) > 5
    failures = []
    for cmd in flags:
        flag = cmd.text.split("`")[0]
        if "=" not in flag and " " not in flag:
            if not _key_exists(flag):
                failures.append(f"{cmd}: no such argument")
            continue
        words = shlex.split(flag) if " " in flag and "=" not in flag.split()[0] else [flag]
        results = [check_kd(["fit", *base, *words]) for base in (BASE_TEACHER, BASE_STUDENT)]
        if all(code != 0 for code, _ in results):
            failures.append(f"{cmd}\n  -> {results[0][1][-400:]}")
    assert not failures, "\n".join(failures)


PATH_RE = re.compile(r"(?<![\w/.-])((?:configs|docs|kd_lightning|experiments|tests|make|results/proxy)/[\w./{},*<>-]*"
                     r"|Makefile|constraints\.txt|pyproject\.toml)")


#: Folders the docs name that a command creates (so a clean clone does not have them yet).
WRITTEN_BY_RUNS = {"experiments/results/": "make bench writes experiments/results/bench-<gpu>-<date>.json"}


def _expand(path: str) -> list[str]:
    brace = re.search(r"\{([^}]*)\}", path)
    if not brace:
        return [path]
    return [p for alt in brace.group(1).split(",") for p in _expand(path[:brace.start()] + alt + path[brace.end():])]


def test_named_paths_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        names = PATH_RE.findall(text) + [m for m in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in m]
        for name in names:
            name = name.rstrip(".,:;)")
            if "<" in name or name.endswith("-") or name in WRITTEN_BY_RUNS:
                continue  # a placeholder (configs/teacher/<backbone>.yaml), or a folder a command creates
            for path in _expand(name):
                base = doc.parent if doc.parent != ROOT and not path.startswith(("configs/", "kd_lightning/")) \
                    and (doc.parent / path).exists() else ROOT
                if not list(base.glob(path)) and not (doc.parent / path).exists():
                    missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(sorted(set(missing)))


def _yaml_values(cell: str) -> list:
    text = cell.replace("`", "").strip()
    if "(" in text:  # a class instance: `IntraClassContrastive(temperature=0.1)`
        return [text]
    return yaml.safe_load(f"[{text}]")


def _same(doc_value, default) -> bool:
    if type(default).__name__.startswith("LazyInstance_") or hasattr(default, "__class__") and \
            "LazyInstance" in repr(default):
        return repr(default).replace("LazyInstance_", "") == str(doc_value)
    if isinstance(default, bool) or default is None:
        return doc_value == default
    if isinstance(default, (int, float)):
        try:
            return float(doc_value) == float(default)
        except (TypeError, ValueError):
            return False
    return doc_value == default


CONFIG_DOC = ROOT / "docs" / "configuration.md"


def argument_tables(readme: Path = CONFIG_DOC) -> dict[str, list[tuple[int, list[str], str]]]:
    """docs/configuration.md: the table under **`model: kd_lightning.modules.<Class>`** -> (line, argument names, default cell)."""
    tables: dict[str, list] = {}
    current = None
    for n, line in enumerate(readme.read_text().splitlines(), 1):
        head = re.match(r"\*\*`model: kd_lightning\.modules\.(\w+)`\*\*", line)
        if head:
            current = head.group(1)
            tables[current] = []
        elif line.startswith(("#", "**")):
            current = None  # the next section: a later table is not this class's
        elif current and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[current].append((n, re.findall(r"`(\w+)`", cells[0]), cells[1]))
        elif current and tables[current] and not line.startswith("|"):
            current = None
    return tables


def argument_table_failures(readme: Path = CONFIG_DOC) -> list[str]:
    from kd_lightning import modules

    tables = argument_tables(readme)
    assert set(tables) >= {"TeacherModule"}
    failures = []
    for name, rows in tables.items():
        params = inspect.signature(getattr(modules, name)).parameters
        documented = set()
        for n, names, cell in rows:
            values = _yaml_values(cell)
            if len(values) != len(names):
                failures.append(f"{readme.name}:{n}: {len(names)} arguments but {len(values)} defaults: {cell}")
                continue
            for arg, value in zip(names, values):
                documented.add(arg)
                if arg not in params:
                    failures.append(f"{readme.name}:{n}: {name} has no argument {arg}")
                elif not _same(value, params[arg].default):
                    failures.append(f"{readme.name}:{n}: {name}.{arg} default is {params[arg].default!r}, "
                                    f"the doc says {value!r}")
        if set(params) - documented:
            failures.append(f"{readme.name}: {name}'s table lacks {sorted(set(params) - documented)}")
    return failures


def test_argument_table_defaults_match_the_signatures():
    assert set(argument_tables()) == {"TeacherModule", "StudentModule"}
    failures = argument_table_failures()
    assert not failures, "\n".join(failures)


def _literal(text: str):
    """A default as the README writes it in Python syntax (`None`, `False`, `'noise'`, `0.5`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_prose_signature_defaults_match():
    """`CIFAR100DataModule(data_dir, download=False, ...)` in docs/configuration.md: each key=value is the
    signature's."""
    from kd_lightning import data

    text = CONFIG_DOC.read_text().replace("\n", " ")
    found, failures = 0, []
    for cls, args in re.findall(r"`(\w+DataModule)\(([^)`]*)\)`", text):
        params = inspect.signature(getattr(data, cls)).parameters
        for key, value in re.findall(r"(\w+)=([^,]+)", args):
            found += 1
            if key not in params or not _same(_literal(value.strip()), params[key].default):
                failures.append(f"{cls}({key}={value.strip()}): the signature says "
                                f"{params[key].default if key in params else 'no such argument'!r}")
    assert found >= 10 and not failures, "\n".join(failures)


def test_docs_name_only_the_product():
    hits = [f"{doc.relative_to(ROOT)}:{n}: {word!r} in {line.strip()[:100]}"
            for doc in DOCS for n, line in enumerate(doc.read_text().splitlines(), 1)
            for word in FORBIDDEN if word in line]
    assert not hits, "\n".join(hits)


def test_venv_use_is_stated_and_pairs_are_quoted():
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme
    unquoted = [f"{doc.relative_to(ROOT)}: {m}" for doc in DOCS for m in re.findall(r"PAIR=[^'\s`\"][^\s`]*",
                                                                                       doc.read_text())]
    assert not unquoted, unquoted  # PAIR=a->b unquoted: the shell redirects at '>'


def test_readme_lists_every_doc():
    readme = (ROOT / "README.md").read_text()
    unlisted = [d.name for d in DOCS[1:] if not re.search(rf"(docs/|\s|, ){re.escape(d.name)}", readme)]
    assert not unlisted, f"README.md does not point to {unlisted}"


def test_docstring_commands_of_the_ablations_cli_work(tmp_path: Path):
    """The usage lines in the ablations modules' docstrings (`python -m kd_lightning.ablations build ...`)."""
    from kd_lightning.ablations import __main__ as cli
    from kd_lightning.ablations.report import tables as table

    commands = [Command(Path(m.__file__).name, n, line.strip())
                for m in (cli, table) for n, line in enumerate((m.__doc__ or "").splitlines(), 1)
                if line.strip().startswith("python -m kd_lightning.ablations ")]
    assert len(commands) >= 2
    failures = [f for f in (check(c, tmp_path) for c in commands) if f]
    assert not failures, "\n".join(failures)


def test_docs_are_clean_utf8():
    """No double-encoded UTF-8 (`§` for §, `Ã©` for é): what a Latin-1 round trip leaves behind."""
    hits = [f"{doc.relative_to(ROOT)}:{n}: {line.strip()[:100]}" for doc in DOCS
            for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
            if re.search("[\u00c2\u00c3][\u0080-\u00bf]", line)]
    assert not hits, "\n".join(hits)


def _proxy_minutes() -> tuple[list[float], float, float]:
    """From the committed runs' results.json `wall_seconds` (two runs at a time, so half the sum): the demo's minutes
    per seed (its five runs) and Tables A-C's over all seeds (results/proxy-runs/), Table D's (its own store,
    results/proxy-runs-students/)."""
    import json

    wall: dict[tuple[str, str, str], float] = {}
    for path in (ROOT / "results/proxy-runs").glob("*/*/seed*/*/results.json"):
        # <teacher run>-<hash>/seed<k>/<teacher | method-hash> (kd_lightning/ablations/grid/store.py)
        top, seed, folder = path.parts[-4:-1]
        run, name = top.rsplit("-", 1)[0], folder.rsplit("-", 1)[0]
        stage = "teacher" if folder == "teacher" else "student" if name in ("kd", "alone") else f"student-{name}"
        wall[run, seed, stage] = float(json.loads(path.read_text())["wall_seconds"])
    seeds = sorted({seed for _, seed, _ in wall})
    demo_runs = [("plain_ce", "teacher"), ("plain_ce", "student"), ("paper", "teacher"), ("paper", "student"),
                 ("alone", "student")]
    demo = [sum(wall[run, seed, stage] for run, stage in demo_runs) / 2 / 60 for seed in seeds]
    tables = sum(v for (run, _, stage), v in wall.items() if stage in ("teacher", "student") and run != "alone")
    students = sum(float(json.loads(path.read_text())["wall_seconds"])
                   for path in (ROOT / "results/proxy-runs-students").glob("*/*/seed*/*/results.json"))
    return demo, tables / 2 / 60, students / 2 / 60


def test_time_claims_are_the_committed_runs():
    """docs/results.md's timings are computed here from the committed runs, not copied: a re-run proxy that takes
    longer fails this test until the doc says so."""
    demo, tables, students = _proxy_minutes()
    readme = " ".join((ROOT / "docs" / "results.md").read_text().split())
    lo, hi = round(min(demo) * 2) / 2, round(max(demo) * 2) / 2  # to the half minute
    assert f"One seed took {lo:g} to {hi:g} minutes" in readme, (lo, hi)
    assert f"Tables A-C took {round(tables)} minutes for the 5 seeds" in readme, tables
    assert f"Table D took {round(students)} minutes for its 3 seeds" in readme, students


def _table_d_lines() -> list[str]:
    """docs/results.md's Table D, one line per student method, from the committed results/proxy/students.csv (whose
    intervals tests/test_table_reports.py pins to an independent computation)."""
    import pandas as pd

    csv = pd.read_csv(ROOT / "results" / "proxy" / "students.csv")
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = []
    for _, part in csv.groupby("row", sort=False):
        ce, paper = (part[part.run == run].iloc[0] for run in ("plain_ce", "paper"))
        cells = [ce.label.split(" ← ")[0]]
        cells += [f"{pct(r.student_test_acc_last_mean)} ± {pct(r.student_test_acc_last_std)}" for r in (ce, paper)]
        for which in ("last", "best"):
            mean, lo, hi = (paper[f"diff_student_acc_{which}_{k}"] for k in ("mean", "ci_low", "ci_high"))
            mark = " *" if lo > 0 or hi < 0 else ""
            cells.append(f"{100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def test_results_doc_table_d_is_the_committed_csv():
    """The student methods' table in docs/results.md is results/proxy/students.csv, every method of the cards, each
    cell on 3 seeds: a rebuilt Table D changes it, and this test says what to paste."""
    import pandas as pd

    from kd_lightning.distillation.registry import method_cards

    csv = pd.read_csv(ROOT / "results" / "proxy" / "students.csv")
    assert set(csv.row) == {card.name for card in method_cards()}
    assert set(csv.student_test_acc_last_n) == {3} and set(csv.diff_student_acc_last_n.dropna()) == {3}
    text = (ROOT / "docs" / "results.md").read_text()
    lines = _table_d_lines()
    assert all(line in text for line in lines), "docs/results.md's Table D is stale; paste:\n" + "\n".join(lines)


def test_readme_method_table_is_the_cards():
    """The README's method table is rendered from the method cards (`python -m kd_lightning.distillation --readme`):
    a method added, renamed or given a published number changes it, and this test says what to paste."""
    from kd_lightning.distillation.registry import readme_method_table

    table = readme_method_table()
    assert table in (ROOT / "README.md").read_text(), f"README.md's method table is stale; paste:\n{table}"


def test_readme_is_a_first_hour_read():
    assert len((ROOT / "README.md").read_bytes()) < 10_000


def test_development_tree_matches_the_package():
    """docs/development.md lists every file of kd_lightning/ablations/ and kd_lightning/sweeps/, one line each, and no
    file that is gone."""
    text = (ROOT / "docs" / "development.md").read_text()
    listed = set(re.findall(r"^(kd_lightning/(?:ablations|sweeps)/\S+\.py) ", text, flags=re.M))
    present = {p.relative_to(ROOT).as_posix() for package in ("ablations", "sweeps")
               for p in (ROOT / "kd_lightning" / package).rglob("*.py")}
    assert listed == present, (sorted(present - listed), sorted(listed - present))
