"""tutorlm generate vs a bare asyncio client against one local OpenAI-compatible server.

    python benchmarks/generate_http.py [--requests 2000] [--concurrency 32] [--delay-s 0.01] [--url URL --model NAME]

Both sides send the same chat-completion requests at the same concurrency, back to back, to the same
server: by default the project's fake server (tests/fake_openai.py) in its own process with a fixed
simulated latency, or any server given with --url (e.g. llama.cpp, vLLM). The bare client is httpx +
asyncio + a semaphore and nothing else: no cache, no retries, no progress. Reported: completions/s of
each, their ratio (goal >= 0.95), and the teacher calls a rerun of `tutorlm generate` makes (goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig, TeacherConfig  # noqa: E402
from tutorlm.generate import generate, plan, sampling_of  # noqa: E402
from tutorlm.tasks import load_task  # noqa: E402


async def bare_client(url: str, model: str, bodies: list[dict], concurrency: int) -> float:
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def one(body: dict) -> None:
            async with slots:
                response = await client.post(f"{url}/chat/completions", json=body)
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay-s", type=float, default=0.01, help="latency of the fake server's replies")
    parser.add_argument("--url", help="an existing OpenAI-compatible server (default: start the fake one)")
    parser.add_argument("--model", default="teacher-model")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate_http.json"))
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--delay-s", str(args.delay_s)],
                                  stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            recipe = Recipe(
                run=RunConfig(name="bench", output_dir=tmp), task=TaskConfig(source="arithmetic"),
                teacher=TeacherConfig(backend="openai", base_url=url, model=args.model, max_concurrency=args.concurrency,
                                      api_key_env=None),
                generate=GenerateConfig(limit=args.requests, max_tokens=args.max_tokens, cache_path=f"{tmp}/cache.sqlite"),
            )
            task = load_task(recipe.task)
            requests = plan(task, recipe.generate).requests
            sampling = sampling_of(recipe.generate)
            bodies = [{"model": args.model, "messages": r.messages, "n": 1, "temperature": sampling.temperature,
                       "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": sampling.seed} for r in requests]
            asyncio.run(bare_client(url, args.model, bodies[: min(100, len(bodies))], args.concurrency))  # warm-up
            bare_s = asyncio.run(bare_client(url, args.model, bodies, args.concurrency))
            quiet = Console(file=open(os.devnull, "w"))
            started = time.perf_counter()
            stats = generate(recipe, console=quiet)
            tutorlm_s = time.perf_counter() - started
            rerun = generate(recipe, force=True, console=quiet)
    finally:
        if server is not None:
            server.terminate()
            server.wait()

    result = {
        "benchmark": "generate_http", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "server": args.url or f"fake OpenAI server, {args.delay_s * 1000:.0f} ms per reply", "requests": args.requests,
        "concurrency": args.concurrency,
        "bare_client_completions_per_s": round(args.requests / bare_s, 1),
        "tutorlm_completions_per_s": round(stats["calls_made"] / tutorlm_s, 1),
        "ratio": round((stats["calls_made"] / tutorlm_s) / (args.requests / bare_s), 3),
        "tutorlm_wall_s_including_setup": round(tutorlm_s, 2), "rerun_teacher_calls": rerun["calls_made"],
        "rerun_cache_hits": rerun["cache_hits"],
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
