"""`realm chat`: an interactive chat in the terminal, on the server's path (chat template, guest)."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from typing import Any

import click

from host_functions.engine.model import Model
from host_functions.errors import RealmError
from realm.chat import load_chat_template
from realm.cli import main
from realm.cli.options import flag_errors, load_with_progress, model_options
from realm.cli.run import request_fields, sampling_options
from realm.request.fields import check_sampling
from realm.request.sources import for_tenant
from realm.request.spec import RunRequest
from realm.sandbox.intake import reference_guest
from realm.sandbox.report import GuestRunCancelled
from realm.tenants import TenantRegistry

EXIT_COMMANDS = ("/exit", "/quit")
# A model without a chat template of its own is most likely a base model (as the bundled Gemma 3 270M
# is): it continues text, so a chat through a family's template answers poorly.
BASE_MODEL_NOTICE = ("note: {name} has no chat template of its own, so it is likely a base model: it continues "
                     "text (completion prompts work) rather than answering; for chat, pass an instruction-tuned "
                     "GGUF with --model")


@main.command()
@model_options
@sampling_options
@click.option("--system", help="System message that opens the conversation.")
@click.option("--chat-template", "chat_template", metavar="NAME|FILE",
              help="gemma, llama2, llama3, phi3, chatml or a Jinja file (default: the model's, else its family's).")
@click.option("--tenant", "tenant_name", metavar="NAME", help="Chat through tenant NAME's guest and limits.")
def chat(model_path: str | None, backend: str, stop: tuple[str, ...], system: str | None,
         chat_template: str | None, tenant_name: str | None, **sampling: Any) -> None:
    """Chat with the model: type a message, read the streamed answer; Ctrl-C stops an answer, /exit (or end
    of input, or Ctrl-C at the prompt) quits. Wants an instruction-tuned model: the bundled Gemma is a base model."""
    with flag_errors():
        check_sampling(request_fields("", sampling, stop, ()))  # bad flags fail now, not at every turn
    if tenant_name:
        registry = TenantRegistry()
        base = for_tenant(registry, registry.get(tenant_name), {})
    else:
        base = RunRequest({}, reference_guest())
    base.limits.validate()  # a registry written before limits were validated may hold inf: fail now, not per turn
    model = load_with_progress(model_path, backend)
    template = load_chat_template(model.tokenizer, model.config.arch, chat_template)
    history = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"chatting with {model.path.stem} (template {template.source}); /exit quits, Ctrl-C stops an "
                   "answer", err=True)
    if model.tokenizer.chat_template is None:
        click.echo(BASE_MODEL_NOTICE.format(name=model.path.stem), err=True)
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
        fields = request_fields(template.render(turn), sampling, stop, (), special=True)
        try:
            answer = _answer(dataclasses.replace(base, fields=fields), model)
        except RealmError as exc:  # this turn failed; the conversation goes on without it
            click.echo(f"\nError: {exc}", err=True)
            continue
        click.echo()
        history = turn + [{"role": "assistant", "content": answer}]


def _answer(request: RunRequest, model: Model) -> str:
    """Run one turn, streaming its text; Ctrl-C while it runs stops it (the text so far is the answer)
    and the chat goes on; Ctrl-C at the prompt ends the chat."""
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        return request.run(model, on_text=_stream, cancel=cancel).text
    except GuestRunCancelled as exc:
        click.echo("\n[stopped]", err=True)
        return exc.result.text
    finally:
        signal.signal(signal.SIGINT, previous)


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
