"""The ``prunekit`` command line. Light commands never import torch, diffusers or DeepSpeed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunekit import __version__
from prunekit.errors import PluginError, PrunekitError, RecipeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Config-driven pruning of text-to-image diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    # The ``deepspeed`` launcher appends --local_rank=N to the command; LOCAL_RANK says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe (validates it first)")
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. budget.target=0.7")
    run.add_argument("--output", "-o", help="run directory (default: OUTPUT_DIR/NAME from the recipe)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in its directory")
    run.add_argument("--quiet", "-q", action="store_true", help="log to the run's file only")

    validate = sub.add_parser("validate", help="validate a recipe and print it resolved")
    validate.add_argument("recipe")
    validate.add_argument("overrides", nargs="*")
    validate.add_argument("--print", action="store_true", dest="show", help="print the resolved recipe")
    validate.add_argument("--no-data", action="store_false", dest="check_data",
                          help="skip the data checks (paths exist here, a sample reads): a recipe for another machine")

    generate = sub.add_parser("generate", help="generate images with a routed mixture of experts")
    generate.add_argument("mixture", help="mixture folder (runs/NAME/artifacts/mixture)")
    generate.add_argument("prompts", nargs="+", help="one or more prompts")
    generate.add_argument("--output", "-o", default="generated", help="folder for the PNGs (must be new or empty)")
    generate.add_argument("--steps", type=int, default=25, help="sampler steps (paper: 25 PNDM)")
    generate.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    generate.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    generate.add_argument("--height", type=int, default=None)
    generate.add_argument("--width", type=int, default=None)
    generate.add_argument("--device", default="cpu")

    from prunekit import evaluation, report, sweep

    sweep.add_arguments(sub.add_parser("sweep", help="run a grid or list of recipes and compare them"))
    evaluation.add_eval_arguments(sub.add_parser("eval", help="evaluate a run's mixture (metrics of its recipe)"))
    report.add_report_arguments(sub.add_parser("report", help="rebuild a run's report.html from its directory"))

    plugins = sub.add_parser("plugins", help="list registered components")
    plugins.add_argument("--kind", help="only this kind (router, gate, loss, ...)")
    return parser


def _print_errors(exc: PrunekitError) -> None:
    from prunekit import distributed
    from prunekit.errors import PeerRankError

    if isinstance(exc, PeerRankError):
        return  # the failing rank printed it
    lines = exc.problems if isinstance(exc, RecipeError) else str(exc).splitlines()
    where = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
    for line in lines:
        print(f"error: {where}{line}", file=sys.stderr)


def cmd_plugins(kind: str | None) -> int:
    from rich.table import Table

    from prunekit.console import console
    from prunekit.registry import KINDS, get_registry, unknown_name_message

    if kind is not None and kind not in KINDS:
        raise PluginError(unknown_name_message("kind", kind, KINDS))
    registry = get_registry()
    table = Table(title="prunekit components", show_lines=False)
    for column in ("kind", "name", "origin", "description"):
        table.add_column(column, overflow="fold")
    for c in registry.components(kind):
        table.add_row(c.kind, c.name, c.origin, c.summary)
    from rich.console import Console

    Console(width=max(console().width, 120)).print(table)
    return 0


def cmd_validate(recipe: str, overrides: Sequence[str], show: bool, check_data: bool = True) -> int:
    from prunekit.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    if show:
        print(loaded.to_yaml(), end="")
    if check_data:  # a dataset path that does not exist here, or data without one readable sample
        from prunekit.data import preflight_data
        from prunekit.errors import MissingPathError
        from prunekit.registry import get_registry

        problems = preflight_data(loaded.data, get_registry())
        if problems:
            raise MissingPathError("\n".join(problems))
    print(f"{recipe}: valid (method {loaded.data['method']['name']!r})", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    recipe = load_recipe(args.recipe, args.overrides)
    execute(recipe, get_registry(), output=args.output, resume=args.resume, console_log=not args.quiet)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.errors import MissingPathError

    mixture = Path(args.mixture)
    if not (mixture / "manifest.json").is_file():
        raise MissingPathError(f"{mixture} is not a mixture folder (no manifest.json)")
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        raise MissingPathError(f"output folder {out} is not empty; choose another with --output")
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.runner import quiet_libraries

    quiet_libraries()
    pipe = PromptRoutedPipeline.from_pretrained(mixture, device=args.device)
    kwargs = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    if args.height:
        kwargs["height"] = args.height
    if args.width:
        kwargs["width"] = args.width
    result = pipe(args.prompts, seed=args.seed, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image, expert) in enumerate(zip(args.prompts, result.images, result.experts)):
        path = out / f"{i:03d}_expert{expert:02d}.png"
        image.save(path)
        print(f"{path}\texpert {expert}\t{prompt}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after options (``run R.yaml --output D a.b=1``), which a plain
    # argparse positional cannot take; leftovers of the KEY=VALUE form are overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "overrides", None) is None or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "plugins":
            return cmd_plugins(args.kind)
        if args.command == "validate":
            return cmd_validate(args.recipe, args.overrides, args.show, args.check_data)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "sweep":
            from prunekit.sweep import main as sweep_main

            return sweep_main(args)
        if args.command == "eval":
            from prunekit.evaluation import main_eval

            return main_eval(args)
        if args.command == "report":
            from prunekit.report import main_report

            return main_report(args)
    except PrunekitError as exc:
        _print_errors(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a problem of the machine (a full disk, a permission): errno text and path
        where = f": {exc.filename}" if exc.filename is not None else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        from prunekit import distributed

        if distributed.world_size() <= 1:
            raise
        # Under a launcher a traceback per rank buries the cause; the run log holds rank 0's.
        print(f"error: [rank {distributed.rank()}] {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
