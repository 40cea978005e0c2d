"""NCCL takes tensors on the rank's CUDA device only: a tensor made with torch.tensor(...) (or zeros, ones, ...)
without `device=` lands on the CPU, and ProcessGroupNCCL refuses it ("No backend type associated with device type
cpu"). On the CPU machines the tests run on the engine's device is the CPU too, so the traces
(tests/test_nccl27_collective_trace.py) cannot tell such a tensor from a right one: this reads the source instead.

Every tensor that ngpt_ds hands straight to a torch.distributed collective (not through
collectives.all_reduce_on, which copies to the device it is given) and makes in the same function with a torch
factory must name its device. An object collective (all_gather_object, broadcast_object_list) carries no tensor.
"""

import ast

from conftest import REPO

TENSOR_COLLECTIVES = {
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "send",
    "recv",
    "isend",
    "irecv",
}
FACTORIES = {"tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like", "stack"}
# Factories that take their device from their inputs: zeros_like(x) is on x's device, stack on its tensors'.
DEVICE_FROM_INPUT = {"zeros_like", "ones_like", "empty_like", "stack"}


def _factory_without_device(value: ast.expr) -> str | None:
    """`torch.<factory>(...)` with no device= (possibly followed by .double() and the like), as text; else None."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr
        in {
            "double",
            "float",
            "long",
            "int",
            "contiguous",
        }
    ):
        value = value.func.value
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)):
        return None
    func = value.func
    if not (isinstance(func.value, ast.Name) and func.value.id == "torch" and func.attr in FACTORIES):
        return None
    if func.attr in DEVICE_FROM_INPUT or any(k.arg == "device" for k in value.keywords):
        return None
    return ast.unparse(value)


def _sites(visited: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(file:function, the collective, the factory call) for each tensor a function makes without a device and
    hands to a collective; `visited` gets every file:function that calls a tensor collective directly."""
    found = []
    visited = set() if visited is None else visited
    for path in sorted((REPO / "ngpt_ds").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            made: dict[str, str] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    text = _factory_without_device(node.value)
                    if text is not None:
                        made[node.targets[0].id] = text
            for node in ast.walk(func):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr not in TENSOR_COLLECTIVES or not isinstance(node.func.value, ast.Name):
                    continue
                if node.func.value.id not in ("dist", "torch.distributed"):
                    continue
                visited.add(f"{path.relative_to(REPO)}:{func.name}")
                for arg in node.args[:1]:
                    if isinstance(arg, ast.Name) and arg.id in made:
                        where = f"{path.relative_to(REPO)}:{func.name}"
                        found.append((where, node.func.attr, made[arg.id]))
                    elif (text := _factory_without_device(arg)) is not None:
                        found.append((f"{path.relative_to(REPO)}:{func.name}", node.func.attr, text))
    return found


def test_every_tensor_made_for_a_collective_names_its_device():
    visited: set[str] = set()
    assert _sites(visited) == []
    # The scan reached the direct sites the traces name (tests/test_nccl27_collective_trace.py's DEVICE_PASSED) and
    # the way through collectives.py.
    assert "ngpt_ds/train/checkpoint_files.py:check_files_on_all_ranks" in visited
    assert "ngpt_ds/train/collectives.py:all_reduce_on" in visited
    assert "ngpt_ds/train/reshape_convert.py:_wait_for" in visited


def test_the_scan_finds_a_tensor_made_on_the_cpu():
    """The scan itself: a torch.tensor without device= handed to dist.all_reduce is found; with device= it is not."""
    bad = ast.parse("def f(dist, torch):\n    flag = torch.tensor([1.0]).double()\n    dist.all_reduce(flag)\n")
    good = ast.parse("def f(dist, torch, d):\n    flag = torch.tensor([1.0], device=d)\n    dist.all_reduce(flag)\n")
    assert _factory_without_device(bad.body[0].body[0].value) == "torch.tensor([1.0])"
    assert _factory_without_device(good.body[0].body[0].value) is None
