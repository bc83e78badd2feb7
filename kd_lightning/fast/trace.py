"""Tracing the step before capturing it: what would break a CUDA graph, named in one line, on any device.

A CUDA graph replays kernels; anything that makes the host read the device (`.item()`, `bool(tensor)`, `int(t)`) or
gives a tensor a shape that depends on its values (`nonzero`, boolean-mask indexing) either fails during capture
with an opaque "operation not permitted when stream is capturing" or is frozen at its capture-time value.
`torch.compile(fn, fullgraph=True, backend=...)` turns the step into one FX graph and runs the very eager kernels
(so the traced call is a real training step with the eager path's numbers, on the CPU too, where the tests check
every method). Two things are found:

- graph breaks (a Python `if` on a tensor, an unsupported call): dynamo raises them under fullgraph;
- host reads and data-dependent shapes: under fullgraph dynamo does NOT raise for those (it keeps `.item()` in the
  graph as an unbacked symbol), so the backend here walks the graph and flags every node whose value is a Python
  scalar taken from a tensor (SymInt/SymFloat/SymBool) or a tensor with an unbacked (data-dependent) size.

Either way the step stops with GraphUnsafeStepError: the op, the user's file and line, and the option that turns
the graph off.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from kd_lightning.exceptions import GraphUnsafeStepError

#: The option that turns the whole-step graph off (the step then runs eagerly, or compiled without a graph).
GRAPH_OFF = "--model.cuda_graph=false"
_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


def first_line(err: BaseException) -> str:
    """The message's first non-empty line (dynamo's messages go on for pages)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def user_location(text: Optional[str]) -> str:
    """'file:line' of the innermost frame of a dynamo/FX stack trace ('' when there is none)."""
    found = ""
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith('File "'):
            path, _, rest = line[len('File "'):].partition('", line ')
            found = f"{path.split('/kd_lightning/')[-1] if '/kd_lightning/' in path else path}:{rest.split(',')[0]}"
    return found


def _data_dependent(value: Any) -> bool:
    if isinstance(value, _SYMBOLIC):
        return True
    if isinstance(value, torch.Tensor):
        return any(isinstance(s, torch.SymInt) and bool(free_unbacked_symbols(s)) for s in value.shape)
    if isinstance(value, (tuple, list)):
        return any(_data_dependent(v) for v in value)
    return False


def graph_unsafe_nodes(gm: torch.fx.GraphModule) -> list[str]:
    """'<op> at <file:line>' for every node of a traced graph that reads the device or has a data-dependent shape."""
    found = []
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method") and _data_dependent(node.meta.get("example_value")):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            where = user_location(node.meta.get("stack_trace"))
            found.append(f"{name}{' at ' + where if where else ''}")
    return found


def traced(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """`fn` run through `torch.compile(fullgraph=True)` with a checking, otherwise eager backend; a graph break, a
    host read or a data-dependent shape raises GraphUnsafeStepError naming the op and GRAPH_OFF."""
    problems: list[str] = []

    def check_then_run_eagerly(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        problems.extend(graph_unsafe_nodes(gm))
        return gm.forward

    compiled = torch.compile(fn, fullgraph=True, backend=check_then_run_eagerly, dynamic=False)

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            out = compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:  # graph breaks (Unsupported) and what dynamo rejects
            where = user_location(str(err).partition("from user code:")[2])
            raise GraphUnsafeStepError(
                f"the fast path's {what} cannot run inside a CUDA graph: {first_line(err)}"
                f"{' at ' + where if where else ''}; make it graph-safe or set {GRAPH_OFF}") from None
        if problems:
            raise GraphUnsafeStepError(
                f"the fast path's {what} cannot run inside a CUDA graph: {problems[0]} reads the device on the host "
                f"or has a data-dependent shape; make it graph-safe or set {GRAPH_OFF}")
        return out

    return call
