"""Kernel commands: `realm kernels test` runs every GPU or CPU kernel against its float64 NumPy reference."""

from __future__ import annotations

import json

import click
from rich.table import Table

from host_functions.backends.wgpu.context import GPUContext
from host_functions.kernel_tests import harness
from host_functions.kernel_tests.cpu_cases import CpuKernelContext
from realm.cli import main
from realm.cli.console import stdout_console

console = stdout_console()


@main.group()
def kernels() -> None:
    """GPU (WGSL) and CPU (native) kernels: check them against NumPy references."""


@kernels.command("test")
@click.option("--backend", "-b", type=click.Choice(harness.BACKENDS), default="wgpu", show_default=True,
              help="Kernels to test: wgpu (the WGSL kernels) or cpu (the native library; REALM_CPU_KERNELS "
                   "picks its variant).")
@click.option("--format", "-f", "formats", multiple=True, metavar="FMT",
              help="Only cases of this weight format (Q4_K, F16, ...); repeatable.")
@click.option("--kernel", "-k", "kernel_names", multiple=True, metavar="NAME",
              help="Only cases of this kernel (matmul, gather, ...); repeatable.")
@click.option("--quick", is_flag=True, help="Only the quick suite (what pytest runs).")
@click.option("--reps", type=click.IntRange(0), default=3, show_default=True,
              help="Timed runs per case for the GB/s column (0: no timing).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of result objects.")
def test(backend: str, formats: tuple[str, ...], kernel_names: tuple[str, ...], quick: bool, reps: int,
         as_json: bool) -> None:
    """Run kernel cases on random data; exit status 1 if any case fails."""
    ctx = CpuKernelContext.create() if backend == "cpu" else GPUContext.get()
    cases = harness.select_cases(formats, kernel_names, quick=quick, ctx=ctx, backend=backend)
    if not cases:
        raise click.ClickException("no kernel cases match the given --format/--kernel")
    with console.status("running kernel cases", spinner="dots") if not as_json else _nothing():
        results = harness.run_cases(cases, reps=reps, ctx=ctx)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results]))
    else:
        console.print(_table(results, ctx))
    failed = sum(not r.passed for r in results)
    if not as_json:
        console.print(f"{len(results) - failed} passed, {failed} failed on {ctx.adapter_name}")
    if failed:
        raise SystemExit(1)


def _table(results: list[harness.CaseResult], ctx: GPUContext | CpuKernelContext) -> Table:
    table = Table(title=f"kernels on {ctx.adapter_name}")
    for column in ("kernel", "format", "shape", "variant"):
        table.add_column(column)
    for column in ("max abs err", "max rel err", "tol", "GB/s"):
        table.add_column(column, justify="right")
    table.add_column("result")
    for r in results:
        table.add_row(r.kernel, r.fmt, r.shape, r.variant, _num(r.max_abs_err), _num(r.max_rel_err), _num(r.tol),
                      f"{r.gbps:.3f}" if r.gbps is not None else "-",
                      "[green]pass[/]" if r.passed else f"[red]FAIL[/] {r.error or ''}")
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
