"""The command table of `realm`: every command is found, and each loads only the libraries it needs."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from realm.cli import COMMAND_MODULES, main


def test_the_command_table_names_exactly_the_commands_its_modules_register() -> None:
    with click.Context(main) as ctx:
        assert main.list_commands(ctx) == sorted(COMMAND_MODULES)
        assert all(main.get_command(ctx, name) is not None for name in COMMAND_MODULES)
        assert main.get_command(ctx, "no-such-command") is None


def _modules_after(*args: str) -> set[str]:
    code = ("import json, sys\nfrom realm.cli import main\n"
            f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_model_commands_never_load_the_server_or_the_sandbox() -> None:
    server_and_sandbox = {"wasmtime", "starlette", "uvicorn", "jinja2", "prometheus_client", "wgpu"}
    for command in ("bench", "inspect", "tokenize", "logits"):
        assert not server_and_sandbox & _modules_after(command, "--help"), command
    serve = _modules_after("serve", "--help")
    assert {"wasmtime", "uvicorn"} <= serve
    assert "ray" not in serve  # Ray is loaded only by `realm serve --replicas` (realm/cluster)
