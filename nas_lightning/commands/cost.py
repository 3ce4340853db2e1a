"""``nas-lightning cost``: params and FLOPs of given archs, for a configured space, with no data."""

from __future__ import annotations

from jsonargparse import auto_cli

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.arch_file import read_arch_file
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json

# ``read_arch_file`` lives in the library (nas_lightning.utils.arch_file); the name stays importable here.
__all__ = ["cost", "cost_main", "cost_table", "read_arch_file"]


def cost_table(space: SearchSpace, archs: list[Arch]) -> list[dict[str, object]]:
    rows = []
    for arch in archs:
        params, flops = space.cost(arch)
        rows.append({"arch": str(arch), "params": params, "params_M": params / 1e6, "flops": flops,
                     "mflops": flops / 1e6})
    return rows


def cost(space: SearchSpace, archs: list[str] | None = None, archs_file: str | None = None,
         output: str | None = None) -> list[dict[str, object]]:
    """Print (and optionally write to ``output``, .csv or .json) the params and FLOPs of archs.

    Args:
        space: the search space, e.g. ``--space NB201Space --space.C 16``.
        archs: arch strings in the space's format.
        archs_file: a file of archs (lines, CSV with an ``arch`` column, or JSON).
        output: where to write the table; .csv or .json.
    """
    chosen = [space.decode(a) for a in archs or []]
    if archs_file:
        chosen += read_arch_file(archs_file, space)
    if not chosen:
        raise ValueError("no archs given: pass --archs '[\"...\"]' or --archs_file FILE")
    rows = cost_table(space, chosen)
    width = max(len(str(r["arch"])) for r in rows)
    print(f"{'arch':<{width}}  {'params (M)':>10}  {'FLOPs (M)':>10}")
    for r in rows:
        print(f"{r['arch']:<{width}}  {r['params_M']:>10.6f}  {r['mflops']:>10.2f}")
    if output:
        if output.endswith(".json"):
            atomic_write_json(output, rows)
        else:
            atomic_write_csv(output, rows)
        print(f"wrote {output}")
    return rows


def cost_main(argv: list[str]) -> None:
    auto_cli(cost, args=argv, as_positional=False)
