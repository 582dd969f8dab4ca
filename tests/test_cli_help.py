"""The CLI explains itself: help on every option, exit codes in --help, shell completion that works."""

from __future__ import annotations

from collections.abc import Iterator

import click

from grpc_messenger.cli import exit_codes
from grpc_messenger.cli.main import cli
from tests.cli_support import messenger


def _commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from _commands(sub, (*path, name))


def test_every_command_and_option_has_help_text() -> None:
    missing = [
        f"{' '.join(path)} {'/'.join(param.opts)}"
        for path, command in _commands(cli, ("messenger",))
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    undocumented = [" ".join(path) for path, command in _commands(cli, ("messenger",)) if not command.help]
    assert missing == []
    assert undocumented == []


def test_help_lists_the_exit_codes_and_completion() -> None:
    done = messenger("--help")
    assert done.returncode == 0
    for code in (exit_codes.OK, exit_codes.FAILED, exit_codes.BAD_INPUT, exit_codes.QUEUED, exit_codes.LOCAL_DATA):
        assert f"\n    {code}  " in done.stdout
    assert "_MESSENGER_COMPLETE=bash_source messenger" in done.stdout


def test_bash_completion_script_and_completions() -> None:
    script = messenger(env={"_MESSENGER_COMPLETE": "bash_source"})
    assert script.returncode == 0
    assert "_messenger_completion" in script.stdout
    words = messenger(env={"_MESSENGER_COMPLETE": "bash_complete", "COMP_WORDS": "messenger out", "COMP_CWORD": "1"})
    assert "plain,outbox" in words.stdout.splitlines()
