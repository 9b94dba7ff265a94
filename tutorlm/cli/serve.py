"""`tutorlm serve` and `tutorlm serve calibrate` on the command line (the server itself is serve/). Every
ServeConfig field (config.py) is a --flag of the same name."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tutorlm.cli.common import apply_run_flags, error_console, recipe_from
from tutorlm.serve_config import ServeConfig
from tutorlm.errors import ConfigError


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.serve.app import serve

    if args.action == "calibrate":
        from tutorlm.serve.calibrate import calibrate

        if not args.out:
            raise ConfigError("command line: serve calibrate needs --out RUN (a run with a trained student and a teacher)")
        recipe = recipe_from(args, apply_run_flags(args, extra), from_run=True)
        calibrate(recipe, samples=args.samples, temperature=args.temperature, target_share=args.target_share,
                  split=args.split, limit=args.limit, step_floors=_floors(args.step_floors), serve_config=_serve_config(args),
                  console=error_console)
        return 0
    if extra:
        raise ConfigError(f"command line: serve takes no --SECTION.FIELD settings (got {extra[0]}); see tutorlm serve --help")
    return serve(_serve_config(args))


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig the --flags set (the others keep their defaults)."""
    fields = {f.name: getattr(args, f"serve_{f.name}") for f in dataclasses.fields(ServeConfig)}
    return ServeConfig(**{name: value for name, value in fields.items() if value is not None})


def _floors(values: list[float] | None) -> tuple[float, ...]:
    if values and any(floor >= 0 for floor in values):
        raise ConfigError(f"command line: --step-floors are log-probabilities, below 0; got {' '.join(map(str, values))}")
    return tuple(values or ())


def add_parsers(commands: Any, formatter: type) -> None:
    """The serve command."""
    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible server: the student answers, the teacher helps when it must",
        description="Serve the student behind /v1/chat/completions (streaming or not), /v1/completions, /v1/models and "
        "/health. The request's model picks who answers: student, teacher, escalate (the student's k samples must agree, "
        "else the teacher answers) or step (the teacher rewrites the lines where the student hesitates). Needs "
        "pip install -e \".[serve]\".",
        epilog="examples:\n  tutorlm serve --model runs/real-teacher/student --teacher qwen2.5-coder-1.5b-instruct --teacher-dtype int8\n"
        "  tutorlm serve calibrate --out runs/real-teacher --target-share 0.3   # pick --escalate-agreement on held-out questions\n"
        "  tutorlm serve calibrate --out runs/real-teacher --step-floors -0.7 -2.3   # and the step mode at two floors",
        formatter_class=formatter)
    serve.add_argument("action", nargs="?", choices=["calibrate"], help="calibrate: measure accuracy against the teacher's share "
                       "for every escalation threshold on a run's validation questions, and pick one")
    calibration = serve.add_argument_group("calibrate (with a run directory's student and teacher)")
    calibration.add_argument("--out", help="the run directory")
    calibration.add_argument("--target-share", type=float, default=0.3, help="most questions the teacher may answer (default: 0.3)")
    calibration.add_argument("--samples", type=int, default=4, help="student samples per question (default: 4)")
    calibration.add_argument("--temperature", type=float, default=0.7, help="the student's sampling temperature (default: 0.7)")
    calibration.add_argument("--split", default="validation", choices=["train", "validation", "test"], help="(default: validation)")
    calibration.add_argument("--limit", type=int, default=100, help="questions (default: 100)")
    calibration.add_argument("--step-floors", type=float, nargs="+", metavar="LOGPROB", help="also measure the step mode (a local teacher) at these "
                             "log-prob floors, e.g. -0.7 -2.3 -4.6 (greedy; the teacher writes at most --step-teacher-tokens per answer)")
    for item in dataclasses.fields(ServeConfig):
        kind = {"int": int, "float": float}.get(str(item.type), str)
        serve.add_argument(f"--{item.name.replace('_', '-')}", dest=f"serve_{item.name}", type=kind, default=None,
                           metavar=item.name.split("_")[-1].upper(), help=f"{item.metadata['help']} (default: {item.default})")
    serve.set_defaults(handler=cmd_serve)
