"""`realm chat`: an interactive chat in the terminal, on the server's path (chat template, guest)."""

from __future__ import annotations

import sys
from typing import Any

import click

from host_functions.errors import RealmError
from realm.chat import load_chat_template
from realm.cli import main
from realm.cli.options import load_with_progress, model_options
from realm.cli.run import build_request, sampling_options
from realm.sandbox.run import TenantSandbox, compile_guest, reference_guest_path
from realm.tenants import TenantRegistry

EXIT_COMMANDS = ("/exit", "/quit")


@main.command()
@model_options
@sampling_options
@click.option("--system", help="System message that opens the conversation.")
@click.option("--chat-template", "chat_template", metavar="NAME|FILE",
              help="gemma, llama2, llama3, chatml or a Jinja file (default: the model's, else its family's).")
@click.option("--tenant", "tenant_name", metavar="NAME", help="Chat through tenant NAME's guest and limits.")
def chat(model_path: str | None, backend: str, stop: tuple[str, ...], system: str | None,
         chat_template: str | None, tenant_name: str | None, **sampling: Any) -> None:
    """Chat with the model: type a message, read the streamed answer; /exit (or end of input) quits."""
    if tenant_name:
        registry = TenantRegistry()
        tenant = registry.get(tenant_name)
        guest = registry.guest(tenant_name) if tenant.module_sha256 else None
        limits = tenant.limits
    else:
        guest, limits = None, None
    guest = guest or compile_guest(reference_guest_path().read_bytes())
    model = load_with_progress(model_path, backend)
    template = load_chat_template(model.tokenizer, model.config.arch, chat_template)
    sandbox = TenantSandbox(model, limits, tenant=tenant_name or "")
    history = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"chatting with {model.path.stem} (template {template.source}); /exit quits", err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            return
        if not line.strip():
            continue
        turn = history + [{"role": "user", "content": line.rstrip("\n")}]
        # The rendered turn markers are special tokens: the guest tokenizes with PARSE_SPECIAL.
        request = {**build_request(template.render(turn), sampling, stop, ()), "special": True}
        try:
            answer = sandbox.run(guest, request, on_text=_stream).text
        except RealmError as exc:  # this turn failed; the conversation goes on without it
            click.echo(f"\nError: {exc}", err=True)
            continue
        click.echo()
        history = turn + [{"role": "assistant", "content": answer}]


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
