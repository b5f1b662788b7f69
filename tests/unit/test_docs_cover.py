"""The docs match the tool: every public name and every `segue` command and option is
documented in docs/."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

import segue
from segue._cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def _commands() -> dict[str, list[str]]:
    """`segue <command>` → its options (long names), subcommands included."""
    from segue import _cli_inspect  # registers its commands

    del _cli_inspect
    found: dict[str, list[str]] = {}

    def walk(group: object, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            if getattr(command, "commands", None):
                walk(command, path)
                continue
            found[path] = [
                opt for param in command.params for opt in param.opts if opt.startswith("--")
            ]

    root = typer.main.get_command(cli)
    walk(root, "")
    found[""] = [opt for param in root.params for opt in param.opts if opt.startswith("--")]
    return found


def test_every_public_name_is_documented() -> None:
    missing = [n for n in segue.__all__ if n != "__version__" and not re.search(rf"\b{n}\b", DOCS)]
    assert missing == []


def test_every_command_and_option_is_documented() -> None:
    commands = _commands()
    assert {"worker", "status", "workers", "watch", "dashboard", "workflow status"} <= set(commands)
    assert "--debug" in commands[""]
    missing_commands = [c for c in commands if c and f"segue {c}" not in DOCS]
    assert missing_commands == []
    missing_options = [
        f"segue {c} {opt}"
        for c, opts in commands.items()
        for opt in opts
        if not re.search(rf"{re.escape(opt)}\b", DOCS)
    ]
    assert missing_options == []


def test_every_option_says_what_it_does_in_help() -> None:
    from segue import _cli_inspect

    del _cli_inspect
    silent: list[str] = []

    def walk(group: object, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            walk(command, f"{prefix} {name}")
            silent.extend(
                f"segue{prefix} {name} {param.opts[0]}"
                for param in getattr(command, "params", [])
                if param.param_type_name == "option" and not getattr(param, "help", None)
            )

    walk(typer.main.get_command(cli), "")
    assert silent == []


def test_help_shows_no_bool_metavar_and_no_hard_break_mid_sentence() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    for command in [c for c in _commands() if c]:
        shown = runner.invoke(
            cli, [*command.split(), "--help"], terminal_width=200, max_content_width=200
        )
        assert shown.exit_code == 0, shown.output
        assert "<bool>" not in shown.output, command
        # at 200 columns, the command's docstring is one paragraph on one line
        summary = shown.output.split("\n\n")[1].strip()
        assert "\n" not in summary, (command, summary)
