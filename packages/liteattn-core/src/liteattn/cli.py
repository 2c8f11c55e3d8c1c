"""The ``liteattn`` command: ``liteattn bench``, ``liteattn e2e``, and commands other packages add.

A package adds a command through the ``liteattn.commands`` entry-point group; the value is a callable
``main(argv: list[str]) -> int``::

    [project.entry-points."liteattn.commands"]
    inspect = "liteattn_calib.cli:main"
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points

__all__ = ["COMMAND_GROUP", "commands", "main"]

COMMAND_GROUP = "liteattn.commands"


def _bench(argv: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv)


def _e2e(argv: list[str]) -> int:
    from .integrations.e2e import main as e2e_main

    return e2e_main(argv)


_BUILTIN: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "bench": (_bench, "time liteattn backends vs FA3, SDPA and FlexAttention (JSON, table, plot)"),
    "e2e": (_e2e, "run a diffusers pipeline dense vs liteattn: time per step, sparsity, PSNR/SSIM"),
}


def commands() -> dict[str, tuple[object, str]]:
    """Command name -> (callable or entry point, one-line help). Built-in commands win over plug-ins."""
    found: dict[str, tuple[object, str]] = dict(_BUILTIN)
    for entry in entry_points(group=COMMAND_GROUP):
        found.setdefault(entry.name, (entry, f"from {entry.value.split(':')[0].split('.')[0]}"))
    return found


def _usage(found) -> str:
    width = max(len(name) for name in found)
    lines = ["usage: liteattn <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in sorted(found.items())]
    lines += ["", "liteattn <command> --help shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``liteattn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(found))
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"liteattn {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in found:
        print(f"liteattn: unknown command {name!r}\n\n{_usage(found)}", file=sys.stderr)
        return 2
    target = found[name][0]
    if hasattr(target, "load"):
        try:
            target = target.load()
        except Exception as error:
            print(f"liteattn: command {name!r} failed to load: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
    code = target(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
