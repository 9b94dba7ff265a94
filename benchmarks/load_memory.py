"""Memory held after loading a local teacher: with and without handing freed memory back to the system.

    python benchmarks/load_memory.py [--model qwen2.5-coder-1.5b-instruct] [--dtype int8]

Loading a GGUF file de-quantizes every tensor to fp32, and int8 quantization then replaces every linear
layer; the fp32 tensors left behind are freed only by the garbage collector, and glibc keeps freed pages.
`models.load_model` now calls `models.release_memory()` (gc.collect + malloc_trim) after such loads. Each
side loads the model in its own process ("kept" with release_memory made a no-op: the former behaviour)
and reports its resident memory right after loading and its peak. Results: benchmarks/results/load_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import machine, report_side, run_side, versions

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("released", "kept")


def resident_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def side(args: argparse.Namespace) -> None:
    import tutorlm.models.load as models

    if args.side == "kept":
        models.release_memory = lambda: None
    started = time.perf_counter()
    model = models.load_model(args.model, device="cpu", dtype=args.dtype)
    report_side({"load_s": round(time.perf_counter() - started, 1), "rss_after_load_gb": round(resident_kb() / 2**20, 2),
                 "parameter_gb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return side(args)
    results = {}
    for name in SIDES:
        figures, peak_kb = run_side(name, [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--side", name], None)
        results[name] = {**figures, "peak_rss_gb": round(peak_kb / 2**20, 2)}
        print(f"{name:>9}: {figures['rss_after_load_gb']} GB resident after loading ({results[name]['peak_rss_gb']} GB peak, "
              f"{figures['load_s']} s)", flush=True)
    ratio = results["kept"]["rss_after_load_gb"] / results["released"]["rss_after_load_gb"]
    print(f"release_memory: {ratio:.1f}x less resident memory after loading {args.model} ({args.dtype})")
    out = ROOT / "benchmarks" / "results" / "load_memory.json"
    out.write_text(json.dumps({"benchmark": "load_memory", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "model": args.model, "dtype": args.dtype,
                               "sides": results, "resident_ratio": round(ratio, 2)}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
