"""The ``ntdh`` command: one subcommand per job.

``ntdh distillers`` lists the KD methods; ``ntdh datasets`` the datamodules and whether their
files are here; ``ntdh status results/<experiment>`` where a sweep stands; ``ntdh claims``
collects every verdict into ``results/CLAIMS.md``.

Adding a subcommand takes a function ``add_<name>_command(subparsers)`` that declares its
parser and sets ``run`` to a function ``(argparse.Namespace) -> int``, and one entry in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ntdh_bench.distillers import DISTILLERS

SubParsers = Any  # argparse's private _SubParsersAction


def add_distillers_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "distillers",
        help="list the registered KD methods with their defaults",
        description="List every registered distiller: its tasks and its options' defaults "
        "(override them in a config's 'distiller' section or with --set).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(run=run_distillers)


def distiller_listing() -> dict[str, dict[str, Any]]:
    """``{name: {"summary", "tasks", "defaults"}}`` for every registered distiller, by name.

    The summary is the docstring of the distiller's module: the paper it implements.
    """
    listing = {}
    for name in sorted(DISTILLERS):
        cls = DISTILLERS[name]
        doc = inspect.getmodule(cls).__doc__ or ""
        listing[name] = {
            "summary": " ".join(doc.split()),
            "tasks": list(cls.supported_tasks),
            "defaults": cls.defaults(),
        }
    return listing


def run_distillers(args: argparse.Namespace) -> int:
    listing = distiller_listing()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(name) for name in listing)
    for name, entry in listing.items():
        print(f"{name:<{width}}  {entry['summary']}")
        print(f"{'':<{width}}  tasks: {', '.join(entry['tasks'])}")
        options = " ".join(f"{k}={v!r}" for k, v in entry["defaults"].items())
        print(f"{'':<{width}}  defaults: {options or '(none)'}")
    return 0


def add_status_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="done / running / failed / pending runs of a sweep, and its ETA",
        description="Where a sweep stands, read from its results folder (works while it runs, "
        "also on a cluster's shared disk).",
    )
    parser.add_argument("results", nargs="+", help="results/<experiment> folder(s)")
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    from ntdh_bench.status import sweep_status

    code = 0
    for folder in args.results:
        try:
            print(sweep_status(folder).render())
        except FileNotFoundError as exc:
            print(f"ntdh status: {exc}", file=sys.stderr)
            code = 2
    return code


def add_datasets_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list the registered datasets and whether their files are present",
        description="List every registered datamodule, its task, and whether its files are "
        "found under $NTDH_DATA (default ./data).",
    )
    parser.set_defaults(run=run_datasets)


def run_datasets(args: argparse.Namespace) -> int:
    from datamodules import DATAMODULES

    width = max(len(name) for name in DATAMODULES)
    for name, cls in sorted(DATAMODULES.items()):
        state = "available" if cls.is_available() else "files missing"
        summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        print(f"{name:<{width}}  {cls.task:<14}  {state:<13}  {summary}")
    return 0


def add_claims_command(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "claims",
        help="collect every experiment's verdicts into results/CLAIMS.md",
        description="Collect the verdicts of every finished experiment under the results "
        "folder into one page, CLAIMS.md, with a panel of paired differences per experiment.",
    )
    parser.add_argument(
        "--results-dir",
        default=os.environ.get("NTDH_RESULTS", "results"),
        help="the folder holding results/<experiment>/verdicts.json",
    )
    parser.set_defaults(run=run_claims)


def run_claims(args: argparse.Namespace) -> int:
    from ntdh_bench.claims_page import write_claims_page

    path = write_claims_page(args.results_dir)
    print(path.read_text())
    print(f"written to {path}")
    return 0


COMMANDS: tuple[Callable[[SubParsers], None], ...] = (
    add_distillers_command,
    add_datasets_command,
    add_status_command,
    add_claims_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntdh", description="Cross-modal knowledge distillation benchmark (NTDH)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
