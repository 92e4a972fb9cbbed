"""Options and helpers shared by every command that runs a model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from host_functions import native, settings
from host_functions.engine.model import BACKENDS, Model
from host_functions.kv.pool import parse_bytes
from realm.cli.console import stderr_console
from realm.models import load_model, resolve_model_path
from realm.request.fields import MalformedField

stderr = stderr_console()

model_option = click.option(
    "--model", "-m", "model_path", type=click.Path(dir_okay=False), default=None,
    help="GGUF model file (default: $REALM_MODEL, else the bundled Gemma 3 270M Q4_K_M).")
backend_option = click.option(
    "--backend", "-b", type=click.Choice(BACKENDS), default=settings.backend,
    show_default="auto",
    help="Compute backend: wgpu (WGSL on the GPU), cpu (native quantized kernels), numpy (float32 reference), "
         "or auto (wgpu on a real GPU, else cpu).")


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        native.set_default_threads(value)


threads_option = click.option(
    "--threads", "-t", type=click.IntRange(1, 256), default=None, expose_value=False, callback=_set_threads,
    help="Threads of the cpu backend's kernels (default: $REALM_THREADS, else every CPU).")


def _merged_flag(ctx: click.Context, param: click.Parameter, value: str) -> bool:
    return value == "merged"


lora_file_option = click.option("--lora", "lora_file", metavar="FILE", default=None,
                                help="Apply this LoRA adapter (llama.cpp GGUF adapter, or a PEFT folder).")
lora_scale_option = click.option("--lora-scale", type=float, default=1.0, show_default=True,
                                 help="The adapter's scale.")
lora_mode_option = click.option(
    "--lora-mode", "lora_merged", type=click.Choice(["unmerged", "merged"]), default="unmerged", show_default=True,
    callback=_merged_flag,
    help="unmerged: W x + s B (A x) on the shared weights; merged: a cached copy W + s B A (docs/lora.md).")


def check_lora_given(lora_given: bool) -> None:
    """--lora-scale and --lora-mode shape an adapter given with --lora; without one they would be
    silently ignored, so that is a UsageError naming the option."""
    ctx = click.get_current_context()
    if not lora_given:
        for name, flag in (("lora_scale", "--lora-scale"), ("lora_merged", "--lora-mode")):
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
                raise click.UsageError(f"{flag} needs --lora FILE")


def lora_option_group(func: Callable[..., Any]) -> Callable[..., Any]:
    """--lora, --lora-scale and --lora-mode (passed as lora_file, lora_scale, lora_merged: bool)."""
    return lora_file_option(lora_scale_option(lora_mode_option(func)))


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --backend and --threads."""
    return model_option(backend_option(threads_option(func)))


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A size option's bytes (512M, 2G, 1.5GiB); BadParameter for anything else."""
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError:
        raise click.BadParameter(f"expected a size such as 512M or 2G, got {value!r}") from None


kv_memory_option = click.option(
    "--kv-memory", "kv_memory", metavar="SIZE", default=None, callback=parse_size,
    help="KV cache memory of the model, shared by all its sequences (e.g. 512M, 2G). [a quarter of free memory]")


prefix_cache_option = click.option(
    "--no-prefix-cache", "no_prefix_cache", is_flag=True,
    help="Recompute every prompt: no reuse of a tenant's cached KV blocks (docs/prefix_cache.md).")


def model_path_with_progress(model_path: str | None) -> Path:
    """The model file to use; assembling the default model (first run, or a damaged cached copy) is
    shown on stderr: a progress bar on a terminal, one line otherwise."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def show(what: str, fraction: float) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=1.0)
                if not stderr.is_terminal:
                    stderr.print(f"{what} ...", highlight=False, soft_wrap=True)
            bar.update(tasks[what], completed=fraction)

        return resolve_model_path(model_path, progress=show)


def load_with_progress(model_path: str | None, backend: str, kv_memory: int | None = None,
                       prefix_cache: bool = True) -> Model:
    """Load (or reuse) a model, showing a progress bar on stderr while weights are prepared; its KV
    pool reuses cached prefixes if `prefix_cache`."""
    path = model_path_with_progress(model_path)
    columns = (TextColumn("[bold]loading[/] {task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task(path.name, total=1.0)
        model = load_model(path, backend, progress=lambda f: bar.update(task, completed=f), kv_memory=kv_memory)
    if model.backend.kv_pool is not None:
        model.backend.kv_pool.set_prefix_cache(prefix_cache)
    return model


@contextmanager
def flag_errors() -> Iterator[None]:
    """Report a malformed request field as a usage error of the flag that set it (`max_tokens` is
    --max-tokens, `speculative` --speculative)."""
    try:
        yield
    except MalformedField as exc:
        raise click.BadParameter(exc.reason, param_hint=f"--{exc.field.replace('_', '-')}") from None
