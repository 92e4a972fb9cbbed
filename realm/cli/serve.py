"""`realm serve`: the OpenAI-compatible HTTP server for every tenant (docs/serve.md)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click
import uvicorn
from click.core import ParameterSource

from host_functions import native, settings
from host_functions.errors import RealmError
from host_functions.formats.gguf_file import GGUFFile
from realm.cli import main
from realm.cli.options import (
    backend_option,
    load_with_progress,
    model_path_with_progress,
    parse_size,
    prefix_cache_option,
    threads_option,
)
from realm.server import ServerConfig, create_app, listen
from realm.server.build import ServeOptions, build_server, checked_models, preload_default
from realm.server.connections import ConnectionLimits, uvicorn_options
from realm.server.model_catalog import ModelCatalog
from realm.server.model_set import ModelSet
from realm.server.shutdown import GRACE_S, DrainingServer
from realm.tenants import TenantRegistry

_DEFAULTS = ServerConfig()
_SLOW = ConnectionLimits()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--model", "-m", "models", multiple=True, metavar="[NAME=]PATH",
              help="A GGUF model to serve, as NAME (default: the file's stem); repeatable, the first is the "
                   "default model. [default: $REALM_MODEL, else the bundled Gemma 3 270M Q4_K_M]")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Serve every *.gguf in this folder too (found at start, loaded on first use).")
@click.option("--model-memory", metavar="SIZE", callback=parse_size,
              help="What the loaded models may hold together (weights as loaded + KV pools, e.g. 800M, 2GiB); "
                   "the least recently used idle model is unloaded to make room. [default: no bound]")
@click.option("--kv-memory", "kv_memory", metavar="SIZE", callback=parse_size,
              help="Each model's KV cache pool, shared by its sequences (e.g. 512M). [default: a quarter of "
                   "--model-memory, else of free memory]")
@backend_option
@threads_option
@click.option("--chat-template", "chat_template", metavar="NAME|FILE",
              help="Chat template, with one model only: gemma, llama2, llama3, phi3, chatml or a Jinja file "
                   "(default: the model's, else its family's built-in).")
@click.option("--workers", default=_DEFAULTS.workers, show_default=True, type=click.IntRange(1, 256),
              help="Guest runs at once (their steps are batched together).")
@click.option("--max-queue", default=_DEFAULTS.max_queue, show_default=True, type=click.IntRange(0),
              help="Runs that may wait for a worker; beyond that requests get 503.")
@click.option("--max-body-bytes", default=_DEFAULTS.max_body_bytes, show_default=True, type=click.IntRange(1),
              help="Largest request body.")
@click.option("--max-prompt-tokens", default=0, type=click.IntRange(0),
              help="Longest prompt in tokens. [default: the context length]")
@click.option("--ctx-size", "-c", default=0, type=click.IntRange(0),
              help="The context a request's sequences are set up for, at most (as llama.cpp's n_ctx, it picks "
                   "LongRoPE's rope factors). [default: the tenant's max_context, up to the model's]")
@click.option("--default-max-tokens", default=_DEFAULTS.default_max_tokens, show_default=True,
              type=click.IntRange(1), help="max_tokens of a chat request that sets none.")
@click.option("--requests-per-minute", default=_DEFAULTS.requests_per_minute, show_default=True,
              type=click.IntRange(0), help="Per-tenant request rate limit; 0 is off.")
@click.option("--tokens-per-minute", default=_DEFAULTS.tokens_per_minute, show_default=True,
              type=click.IntRange(0), help="Per-tenant token rate limit (prompt + completion); 0 is off.")
@click.option("--admin-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"File holding the admin key (else ${settings.ADMIN_KEY}); without one, admin endpoints "
                   "and /metrics are off.")
@click.option("--drain-timeout", default=60, show_default=True, type=click.IntRange(0),
              help="Seconds SIGTERM waits for in-flight requests before cancelling them.")
@click.option("--header-timeout", default=_SLOW.header_timeout, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a connection may take to send a request's headers; then it is closed.")
@click.option("--body-timeout", default=_SLOW.body_timeout, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a request may take to send its body after its headers; then it is closed.")
@click.option("--max-connections", default=_SLOW.max_connections, show_default=True, type=click.IntRange(1),
              help="Connections in all; requests beyond get 503.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="A browser origin (https://app.example) allowed to call the API, or * for any; repeatable. "
                   "[default: none, CORS off]")
@click.option("--max-connections-per-client", default=_SLOW.per_client, show_default=True,
              type=click.IntRange(0), help="Connections of one client address; 0 is no bound.")
@click.option("--registry", "registry_url", metavar="URL",
              help="The tenant registry: sqlite:///ABS/PATH.db or postgresql://USER@HOST/DB (docs/registry.md). "
                   "[default: $REALM_REGISTRY_URL, else SQLite in $REALM_HOME]")
@prefix_cache_option
@click.option("--replicas", type=click.IntRange(1), default=None,
              help="Serve with N replicas of this server on Ray Serve, each tenant kept on one (docs/cluster.md). "
                   "[default: one process, no Ray]")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="The Ray cluster for --replicas (else $RAY_ADDRESS, else the one `ray start` runs on this machine, "
                   "else a local Ray instance started here).")
@click.option("--ray-dashboard", is_flag=True,
              help="Start the local Ray instance of --replicas with Ray's dashboard on 127.0.0.1 (its UI and state "
                   "API, `ray list actors`; about 200 MiB more). [default: no dashboard]")
def serve(host: str, port: int, models: tuple[str, ...], models_dir: Path | None, model_memory: int | None,
          kv_memory: int | None, backend: str, chat_template: str | None, workers: int,
          max_queue: int, max_body_bytes: int, max_prompt_tokens: int, ctx_size: int, default_max_tokens: int,
          requests_per_minute: int, tokens_per_minute: int, admin_key_file: Path | None, drain_timeout: int,
          header_timeout: float, body_timeout: float, max_connections: int, max_connections_per_client: int,
          cors_origins: tuple[str, ...], no_prefix_cache: bool, registry_url: str | None, replicas: int | None,
          ray_address: str | None, ray_dashboard: bool) -> None:
    """Serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) for every tenant."""
    _log_to_stderr()
    config = ServerConfig(workers, max_queue, max_body_bytes, max_prompt_tokens, ctx_size, default_max_tokens,
                          requests_per_minute, tokens_per_minute, _admin_key(admin_key_file), cors_origins)
    catalog = ModelCatalog(models, models_dir, model_memory, kv_memory, backend, chat_template, not no_prefix_cache)
    options = ServeOptions(catalog, config, registry_url)
    if replicas is not None:
        _serve_replicas(options, replicas, ray_address, ray_dashboard, host, port, drain_timeout)
        return
    if ray_address is not None or ray_dashboard:
        raise click.UsageError(f"{'--ray-address' if ray_address is not None else '--ray-dashboard'} is for --replicas")
    slow = ConnectionLimits(header_timeout, body_timeout, max_connections=max_connections,
                            per_client=max_connections_per_client)
    served = checked_models(catalog)  # bad flags, or a model whose file alone is over --model-memory, fail first
    sock = listen.bind(host, port)  # a busy port or a bad host fails now, before the model loads
    server = build_server(options, served, _load_default)  # a bad registry or default model fails here
    click.echo(f"realm: starting on http://{host}:{port} with {_describe(served)}", err=True)
    uv = DrainingServer(uvicorn.Config(create_app(server), host=host, port=port, lifespan="off",
                                       timeout_graceful_shutdown=drain_timeout + GRACE_S, log_level="info",
                                       **uvicorn_options(slow)), server, drain_timeout)
    try:
        # Returns after SIGINT/SIGTERM once in-flight requests drained (or the timeout passed).
        uv.run(sockets=[sock])
    finally:
        server.runner.close()
        server.usage.close()
        server.models.close()
        sock.close()


def _load_default(models: ModelSet, catalog: ModelCatalog) -> None:
    """preload_default, its load shown on stderr."""
    if catalog.models or catalog.models_dir is None:
        first = models.sources[0]
        load_with_progress(str(first.path), catalog.backend, catalog.kv_to_load(first), catalog.prefix_cache)
    preload_default(models, catalog)


def _describe(models: ModelSet) -> str:
    """The models for the start's line: each loaded one with its backend and chat template."""
    loaded = {s.id: s for s in models.loaded()}
    return ", ".join(f"{i} ({loaded[i].model.backend.name}, chat template {loaded[i].template.source})"
                     if i in loaded else f"{i} (loaded on first use)" for i in models.ids)


def _log_to_stderr() -> None:
    """The server's own log lines (models loaded and unloaded, failures) on stderr, as uvicorn's are."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    server_log = logging.getLogger("realm.server")
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)


def _serve_replicas(options: ServeOptions, replicas: int, ray_address: str | None, ray_dashboard: bool, host: str,
                    port: int, drain_timeout: int) -> None:
    """`realm serve --replicas N`: the same server in N Ray Serve replicas (realm/cluster)."""
    from realm.cluster import ray_token

    # Before Ray is imported, which reads RAY_AUTH_MODE once.
    ray_token.send_local_token_to(ray_address or os.environ.get("RAY_ADDRESS"))
    from realm.cluster import launch  # Ray is imported only when it is used

    listen.bind(host, port).close()  # a busy port or a bad host fails now, before Ray starts
    # Every replica must serve the same files: the default model is assembled here, once, and every model
    # named by id and absolute path; a default model that is not a model file fails here, as in a plain
    # `realm serve`, not in every replica.
    catalog = options.catalog
    if not catalog.models and catalog.models_dir is None:
        model_path_with_progress(None)
    checked_models(catalog)
    TenantRegistry(options.registry_url).check()  # a bad or unreachable registry fails once, here
    options = options.pinned()
    if catalog.models or catalog.models_dir is None:
        GGUFFile(options.catalog.sources()[0].path)
    threads = native.default_threads() if _given("threads") else None

    def announce(cpus: float, cluster: str) -> None:
        click.echo(f"realm: {replicas} replica(s) of {', '.join(_ids(options))} on http://{host}:{port} "
                   f"(Ray Serve, {cpus:g} CPU each, on {cluster})", err=True)

    stopped_by = launch.serve_replicas(options, replicas, threads, ray_address, host, port, drain_timeout, announce,
                                       ray_dashboard)
    # Ended as the single-process server ends: status 130 for Ctrl-C, "terminated by SIGTERM" otherwise.
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(stopped_by, signal.SIG_DFL)
    signal.raise_signal(stopped_by)


def _ids(options: ServeOptions) -> list[str]:
    return [text.split("=", 1)[0] for text in options.catalog.models]


def _given(param: str) -> bool:
    """Whether the command line (or its environment variable) set `param`, not its default."""
    source = click.get_current_context().get_parameter_source(param)
    return source is not None and source is not ParameterSource.DEFAULT


def _admin_key(path: Path | None) -> str | None:
    """The admin key from --admin-key-file or the environment; never printed or logged."""
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RealmError(f"cannot read the admin key file {path}: {exc}") from None
        if not key:
            raise RealmError(f"the admin key file {path} is empty")
        return key
    return settings.admin_key()
