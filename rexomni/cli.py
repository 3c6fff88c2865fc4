"""The `rexomni` command line.

The core commands live here; the others belong to the training, data and evaluation packages and
are imported only when their subcommand is called, so `rexomni detect` never imports DeepSpeed.
Each such package exposes ``main(argv) -> int`` in its ``cli`` module.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with main(argv), one-line help)
EXTERNAL_COMMANDS = {
    "data": ("rexomni.data_engines.cli", "generate synthetic scenes, convert and mix data sets"),
    "eval": ("rexomni.eval.cli", "score a model or a predictions file on benchmarks"),
    "sft": ("rexomni.sft.cli", "supervised fine-tuning"),
    "warmup": ("rexomni.sft.recognition", "teach the vision tower to name what each image token shows (before SFT)"),
    "grpo": ("rexomni.grpo.cli", "GRPO from an SFT checkpoint with geometry-aware rewards"),
    "demo": ("rexomni.sft.demo", "train a detector from random weights in ~10 CPU minutes: loss curve, drawings"),
}

# subcommand -> ("module" with main(argv) or "module:function", one-line help) for the core's commands
CORE_COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("rexomni.commands:detect_main", "detect categories in images (JSON Lines out, optional drawings)"),
    "model": ("rexomni.commands:model_main", "create checkpoints: `rexomni model init|grow ... --out DIR`"),
    "app": ("rexomni.app:main", "try a model in the browser (Gradio; the `app` extra)"),
}


def _usage() -> str:
    lines = ["usage: rexomni COMMAND [ARGS...]", "", "commands:"]
    for name, (_, help_text) in {**CORE_COMMANDS, **EXTERNAL_COMMANDS}.items():
        lines.append(f"  {name:<8} {help_text}")
    lines.append("")
    lines.append("Run `rexomni COMMAND --help` for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"rexomni {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    commands = {**CORE_COMMANDS, **EXTERNAL_COMMANDS}
    if command not in commands:
        print(f"rexomni: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = commands[command][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    return int(entry(rest) or 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default to its help, unless the help already speaks of it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if "default" in text or not shown:
            return text
        return super()._get_help_string(action)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser for one subcommand, named as users type it (``rexomni detect``)."""
    return argparse.ArgumentParser(prog=f"rexomni {prog}", description=description, formatter_class=HelpFormatter)


if __name__ == "__main__":
    sys.exit(main())
