"""Model commands: inspect, tokenize, logits, bench."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
from rich.table import Table

from host_functions.arch.config import ModelConfig
from host_functions.formats.gguf_file import GGUFFile
from host_functions.lora.adapter import check_adapter_source
from host_functions.tokenizer import Tokenizer
from realm.bench.constrained import run_constrained_bench
from realm.bench.lora import SPREAD_SCALES, lora_bindings, run_lora_bench, run_lora_concurrency_bench
from realm.bench.speed import run_bench, run_concurrency_bench
from realm.cli import main
from realm.cli.console import stdout_console
from realm.cli.options import (
    check_lora_given,
    flag_errors,
    load_with_progress,
    lora_mode_option,
    lora_option_group,
    lora_scale_option,
    model_option,
    model_options,
    model_path_with_progress,
)
from realm.cli.prompt import text_argument
from realm.request.fields import RequestFieldError, check_constraint, speculative_drafts

console = stdout_console()


def _open(model_path: str | None) -> tuple[GGUFFile, ModelConfig]:
    gguf = GGUFFile(model_path_with_progress(model_path))
    return gguf, ModelConfig.from_gguf(gguf)


@main.command()
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(model_path: str | None, as_json: bool) -> None:
    """Show a model's architecture, dimensions, tokenizer and tensors."""
    gguf, cfg = _open(model_path)
    tok = Tokenizer.from_metadata(gguf.metadata)
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in gguf.tensors.values():
        row = by_type[t.qtype.name]
        row[0] += 1
        row[1] += t.n_elements
        row[2] += t.data.nbytes
    info = {
        "path": str(gguf.path), "name": gguf.get("general.name", ""), "architecture": cfg.arch,
        "n_vocab": cfg.n_vocab, "n_embd": cfg.n_embd, "n_layers": cfg.n_layers, "n_ff": cfg.n_ff,
        "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim,
        "context_length": cfg.context_length, "rope_base": cfg.rope_base, "rope_layout": cfg.rope_layout,
        "sliding_window": cfg.sliding_window, "tied_output": cfg.tied_output, **_structure(cfg),
        "tokenizer": {"model": gguf.get("tokenizer.ggml.model"), "vocab_size": tok.vocab_size,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "add_bos": tok.add_bos},
        "tensors": {k: {"count": v[0], "elements": v[1], "bytes": v[2]} for k, v in sorted(by_type.items())},
    }
    if as_json:
        click.echo(json.dumps(info))
        return
    summary = Table(title=f"{gguf.path.name}", show_header=False)
    for key, value in info.items():
        if key not in ("tensors",):
            summary.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(summary)
    tensors = Table("type", "tensors", "parameters", "MiB", title="tensors by type")
    for name, row in info["tensors"].items():
        tensors.add_row(name, str(row["count"]), f"{row['elements']:,}", f"{row['bytes'] / 2**20:.1f}")
    console.print(tensors)


def _structure(cfg: ModelConfig) -> dict[str, object]:
    """What `inspect` says of the architecture's structure: heads, rope scaling, fused matrices, biases, norms."""
    layout = cfg.layout
    if cfg.long_rope:
        factors = (f"LongRoPE: {cfg.rope_factor_sets[0]} up to a context of {cfg.rope_original_context}, "
                   f"{cfg.rope_factor_sets[1]} beyond")
    else:
        factors = cfg.rope_factor_sets[0] if cfg.rope_factor_sets else "none"
    return {
        "attention": f"{cfg.n_head} query heads / {cfg.n_head_kv} KV heads of {cfg.head_dim}, "
                     f"scale 1/sqrt({cfg.head_dim})",
        "rope_factors": factors, "rope_attn_factor": cfg.rope_attn_factor,
        "fused_matrices": {m.name: list(m.holds) for m in layout.matrices if len(m.holds) > 1},
        "biases": list(layout.biases),
        "norms": [f"{n.name} ({'per head' if n.width == 'head' else n.width})" for n in layout.norms],
        "ffn": f"{cfg.ffn_activation}(gate) * up",
    }


@main.command()
@model_option
@click.option("--special", is_flag=True, help="Parse special tokens such as <start_of_turn> in the text.")
@click.option("--no-bos", is_flag=True, help="Do not add the BOS token.")
@click.option("--json", "as_json", is_flag=True, help='Print {"ids": [...], "pieces": [...]}.')
@click.argument("text")
def tokenize(model_path: str | None, special: bool, no_bos: bool, as_json: bool, text: str) -> None:
    """Show the token ids and pieces of TEXT."""
    text = text_argument(text, "TEXT")
    gguf = GGUFFile(model_path_with_progress(model_path))
    tok = Tokenizer.from_metadata(gguf.metadata)
    ids = tok.encode(text, add_bos=False if no_bos else None, parse_special=special)
    pieces = [tok.piece(i) for i in ids]
    if as_json:
        click.echo(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return
    table = Table("#", "id", "piece")
    for n, (i, p) in enumerate(zip(ids, pieces, strict=True)):
        table.add_row(str(n), str(i), repr(p))
    console.print(table)


def _parse_tokens(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 2,651,6037", param_hint="--tokens") from None
    if not ids:
        raise click.BadParameter("no token ids given", param_hint="--tokens")
    return ids


@main.command()
@model_options
@click.option("--prompt", help="Text to tokenize (BOS added per the model).")
@click.option("--tokens", help="Comma-separated token ids, used exactly as given (no BOS added).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npy file.")
@click.option("--ctx-size", "-c", type=click.IntRange(0), default=None,
              help="The context the sequence is set up for, as llama.cpp's n_ctx (it picks LongRoPE's rope "
                   "factors); 0 is the model's whole context. [the number of tokens]")
@lora_option_group
def logits(model_path: str | None, backend: str, prompt: str | None, tokens: str | None, out_path: str,
           ctx_size: int | None, lora_file: str | None, lora_scale: float, lora_merged: bool) -> None:
    """Write float32 logits for every position, shape [n_tokens, vocab], to a .npy file."""
    check_lora_given(lora_file is not None)
    if (prompt is None) == (tokens is None):
        raise click.UsageError("give exactly one of --prompt or --tokens")
    if prompt is not None:
        prompt = text_argument(prompt, "--prompt")
    out = Path(out_path)
    if not out.parent.is_dir():
        raise click.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    model = load_with_progress(model_path, backend)
    if prompt is not None:
        ids = model.tokenizer.encode(prompt)
    else:
        assert tokens is not None  # exactly one of the two, checked above
        ids = _parse_tokens(tokens)
    if not ids:
        raise click.UsageError("the prompt encodes to no tokens")
    n_ctx = _logits_context(ctx_size, len(ids), model.config.context_length)
    lora = None
    if lora_file is not None:
        if not math.isfinite(lora_scale):
            raise click.BadParameter(f"must be a finite number, got {lora_scale}", param_hint="--lora-scale")
        lora = (model.adapters.acquire(lora_file), lora_scale)  # AdapterError: one line naming the tensor
    result = model.logits_for(ids, lora=lora, merged=lora_merged, n_ctx=n_ctx).astype(np.float32)
    tmp = out.with_name(out.name + ".tmp.npy")
    try:  # written beside the target and renamed, so a failure never leaves half a file
        np.save(tmp, result)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    click.echo(f"wrote {out} {list(result.shape)}", err=True)


def _logits_context(ctx_size: int | None, n_tokens: int, model_ctx: int) -> int | None:
    """--ctx-size checked against the tokens and the model: the context to set up (None: the tokens')."""
    if ctx_size is None:
        return None
    n_ctx = model_ctx if ctx_size == 0 else ctx_size
    if n_ctx > model_ctx:
        raise click.BadParameter(f"{n_ctx} is over the model's context of {model_ctx} tokens", param_hint="--ctx-size")
    if n_ctx < n_tokens:
        raise click.BadParameter(f"{n_ctx} is shorter than the {n_tokens} tokens given", param_hint="--ctx-size")
    return n_ctx


@main.command()
@model_options
@click.option("--prompt-tokens", default=128, show_default=True, help="Prompt length for the prefill figure.")
@click.option("--decode-tokens", default=128, show_default=True, help="Tokens decoded for the decode figure.")
@click.option("--no-guest", is_flag=True, help="Skip the guest-overhead measurement.")
@click.option("--concurrency", "levels", metavar="N,N,...", default=None,
              help="Instead: requests at once through the reference guest, e.g. 1,4,16 (aggregate tok/s, "
                   "p50/p95 latency, TTFT, KV peak; level 1 also against direct steps).")
@click.option("--lora", "lora_files", metavar="FILE", multiple=True,
              help="Instead: decode speed with this LoRA adapter against without, in the same run. With "
                   "--concurrency, requests spread over the adapters given (repeat --lora), or over one file "
                   "at 4 scales.")
@lora_scale_option
@lora_mode_option
@click.option("--speculative", metavar="ngram|draft:FILE|self:N", default=None,
              help="Instead: speculative decoding against plain decoding, alternating, on code, a list, quoting "
                   "text and text without repetition (acceptance_rate, tokens_per_target_step, decode tok/s, "
                   "speedup per kind).")
@click.option("--rounds", default=3, show_default=True,
              help="With --speculative: runs of each mode; the fastest counts.")
@click.option("--json-schema", "schema_file", metavar="FILE", default=None,
              help="Instead: decode speed under the JSON Schema in FILE against without, alternating, at each "
                   "--concurrency level (default 1,16).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an array with --concurrency or --speculative).")
def bench(model_path: str | None, backend: str, prompt_tokens: int, decode_tokens: int, no_guest: bool,
          levels: str | None, lora_files: tuple[str, ...], lora_scale: float, lora_merged: bool,
          speculative: str | None, rounds: int, schema_file: str | None, as_json: bool) -> None:
    """Measure load time, prefill and decode speed, peak memory and guest overhead."""
    if schema_file is not None:
        if speculative is not None or lora_files:
            raise click.UsageError("--json-schema, --speculative and --lora are separate benchmarks: give one")
        _bench_constrained(model_path, backend, schema_file, _levels(levels or "1,16"), decode_tokens, rounds,
                           as_json)
        return
    check_lora_given(bool(lora_files))
    if prompt_tokens < 1 or decode_tokens < 1:
        raise click.BadParameter("token counts must be positive")
    if speculative is not None and (levels is not None or lora_files):
        raise click.UsageError("--speculative, --concurrency and --lora are separate benchmarks: give one")
    if speculative is not None:
        _bench_speculation(model_path, backend, speculative, decode_tokens, rounds, as_json)
        return
    if lora_files:
        _bench_lora(model_path, backend, list(lora_files), lora_scale, lora_merged, levels, prompt_tokens,
                    decode_tokens, as_json)
        return
    if levels is not None:
        _bench_concurrency(model_path, backend, _levels(levels), decode_tokens, as_json)
        return
    result = run_bench(lambda: load_with_progress(model_path, backend), prompt_tokens, decode_tokens,
                       with_guest=not no_guest)
    _print_metrics(result.as_json(), "realm bench", as_json)


def _bench_constrained(model_path: str | None, backend: str, schema_file: str, levels: list[int],
                       decode_tokens: int, rounds: int, as_json: bool) -> None:
    try:
        schema = Path(schema_file).read_text(encoding="utf-8")
        check_constraint({"kind": "json_schema", "text": schema})
    except (OSError, UnicodeDecodeError, RequestFieldError) as exc:
        raise click.BadParameter(f"{schema_file}: {exc}", param_hint="--json-schema") from None
    model = load_with_progress(model_path, backend)
    results = [r.as_json() for r in run_constrained_bench(model, schema, levels, decode_tokens, rounds)]
    if as_json:
        click.echo(json.dumps(results))
        return
    for result in results:
        _print_metrics(result, f"realm bench --json-schema (concurrency {result['concurrency']})", False)


def _print_metrics(data: dict[str, object], title: str, as_json: bool) -> None:
    """One benchmark's figures: a JSON object, or a metric/value table."""
    if as_json:
        click.echo(json.dumps(data))
        return
    table = Table("metric", "value", title=title)
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)


def _bench_lora(model_path: str | None, backend: str, files: list[str], scale: float, merged: bool,
                levels: str | None, prompt_tokens: int, decode_tokens: int, as_json: bool) -> None:
    for file in files:
        check_adapter_source(file)  # AdapterError: one line naming the file
    if not math.isfinite(scale):
        raise click.BadParameter(f"must be a finite number, got {scale}", param_hint="--lora-scale")
    model = load_with_progress(model_path, backend)
    if levels is None:
        if len(files) > 1:
            raise click.UsageError("give one --lora file (several are for --concurrency)")
        single = run_lora_bench(model, files[0], scale, merged, prompt_tokens, decode_tokens).as_json()
        _print_metrics(single, "realm bench --lora", as_json)
        return
    bindings = lora_bindings(files, scale, merged, spread=len(SPREAD_SCALES))
    results = [r.as_json() for r in run_lora_concurrency_bench(model, _levels(levels), decode_tokens, bindings)]
    if as_json:
        click.echo(json.dumps(results))
        return
    table = Table(*results[0], title="realm bench --lora --concurrency")
    for r in results:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise click.BadParameter(f"expected comma-separated counts 1..256, got {text!r}", param_hint="--concurrency")
    return levels


def _bench_concurrency(model_path: str | None, backend: str, levels: list[int], decode_tokens: int,
                       as_json: bool) -> None:
    model = load_with_progress(model_path, backend)
    results = [r.as_json() for r in run_concurrency_bench(model, levels, decode_tokens)]
    if as_json:
        click.echo(json.dumps(results))
        return
    keys = list(dict.fromkeys(k for r in results for k in r))
    table = Table(*keys, title="realm bench --concurrency")
    for r in results:
        table.add_row(*(str(r.get(k, "")) for k in keys))
    console.print(table)


def _bench_speculation(model_path: str | None, backend: str, speculative: str, decode_tokens: int, rounds: int,
                       as_json: bool) -> None:
    # Here, not at the top: it loads the sandbox (wasmtime), which the other model commands never need.
    from realm.bench.speculation import run_speculation_bench

    if rounds < 1:
        raise click.BadParameter(f"must be at least 1, got {rounds}", param_hint="--rounds")
    with flag_errors():  # a usage error for a malformed source or a missing file
        draft_files = speculative_drafts(speculative)
    model = load_with_progress(model_path, backend)
    results = [r.as_json() for r in run_speculation_bench(model, speculative, draft_files, decode_tokens, rounds)]
    if as_json:
        click.echo(json.dumps(results))
        return
    keys = list(results[0])
    table = Table(*keys, title=f"realm bench --speculative {speculative} (fastest of {rounds} alternating rounds)")
    for r in results:
        table.add_row(*(str(r[k]) for k in keys))
    console.print(table)
