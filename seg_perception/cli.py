"""``seg-perception``: one entry point, one subcommand per tool.

Each tool lives in ``seg_perception/tools/<name>.py`` and provides ``HELP`` (one line),
``EPILOG`` (examples), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import sys

TOOLS = ("export", "eval", "bench", "play", "demo", "train")


def _load(name: str):
    return importlib.import_module(f"seg_perception.tools.{name}")


def build_parser(tools: tuple[str, ...] = TOOLS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg-perception",
        description="Semantic segmentation for ROS 2 cameras: tools around the node.",
        epilog="Run 'seg-perception <tool> --help' for a tool's options and examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)
    for name in tools:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"seg_perception.tools.{name}":
                raise
            continue  # a tool not written yet
        tool = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(tool)
        tool.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from seg_perception.process_setup import prepare_process

    prepare_process()  # before the tools' imports start threads (numpy, OpenCV, rclpy, torch)
    argv = sys.argv[1:] if argv is None else argv
    named = next((word for word in argv if not word.startswith("-")), None)
    # Only the named tool's module: building every tool's parser imports torch (seconds).
    args = build_parser((named,) if named in TOOLS else TOOLS).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(levelname)s] %(message)s",
    )
    from seg_perception.errors import SegPerceptionError

    try:
        return int(args.run(args) or 0)
    except (SegPerceptionError, OSError, pickle.UnpicklingError) as exc:  # else: a bug
        print(f"seg-perception {args.tool}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    """The user's side of an error: a project error's own message, a system error's file and
    reason (not its errno), the first line of anything else."""
    from seg_perception.errors import SegPerceptionError

    if isinstance(exc, SegPerceptionError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
