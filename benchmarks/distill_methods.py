"""Distillation methods on the same rationales and questions: SFT vs logit KD, held-out accuracy and wall time.

    tutorlm run kd                                            # first: a run whose objective is kd (the kd recipe)
    python benchmarks/distill_methods.py --run runs/kd        # then: the same student trained with SFT, compared
    tutorlm run kd-qwen && python benchmarks/distill_methods.py --run runs/kd-qwen     # Qwen -> SmolLM2, across tokenizers
    python benchmarks/distill_methods.py --compare runs/arith-sft runs/kd-qwen runs/on-policy runs/on-policy-scratch \
        --name arith                                          # finished runs of one task, side by side

`--compare` reads finished runs (any objective) evaluated on the same questions and writes one row per
run: its objective, the student it started from, held-out accuracy with a 95% Wilson interval, the
train stage's wall time, and the teacher's work: tokens the teacher scored (kd with a local teacher, and
on-policy: the student's samples it graded) or wrote (rationales from a model teacher; the task's
reference solver costs nothing).

The KD side is the run itself (its train stage and evaluations). The SFT side trains the same student
on the same curated.jsonl with the same settings except `train.objective sft`, in RUN-sft/, and is
evaluated on the same questions with the same budget. Both sides' accuracies come with 95% Wilson
intervals, next to the base student and the teacher; wall times are the train stages' own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, versions

ROOT = Path(__file__).resolve().parent.parent


def tutorlm(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tutorlm", *args], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    if result.returncode != 0:
        raise SystemExit(f"tutorlm {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def teacher_work(run: Path, manifest: dict) -> dict:
    """The tokens the teacher wrote (rationales) and scored (distributions, grades) for this run's student."""
    train = manifest["stages"]["train"]
    stats, recipe = train["stats"], train["config"]
    written = 0
    if (recipe.get("teacher") or {}).get("backend", "reference") != "reference" and (run / "curated.jsonl").exists():
        written = sum(json.loads(line).get("completion_tokens", 0) for line in (run / "curated.jsonl").read_text().splitlines())
    scored = 0
    if stats.get("objective") == "kd":
        scored = stats.get("kd", {}).get("teacher_tokens") or 0
        if not scored and (run / "kd_teacher_topk.jsonl").exists():  # runs from before the count was recorded
            scored = sum(len(json.loads(line).get("token_ids", [])) for line in (run / "kd_teacher_topk.jsonl").read_text().splitlines()[1:])
    elif stats.get("objective") == "on_policy":
        scored = stats.get("on_policy_totals", {}).get("teacher_tokens", 0)
    return {"teacher_tokens_written": written, "teacher_tokens_scored": scored}


def compare(runs: list[Path], out: Path) -> None:
    rows = {}
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        train = manifest["stages"].get("train", {})
        if train.get("status") != "done":
            raise SystemExit(f"{run}: its train stage is not finished")
        summary = json.loads((run / "eval" / "summary.json").read_text())
        student = summary["student"]
        recipe = train["config"]
        rows[run.name] = {
            "objective": recipe["train"]["objective"], "started_from": recipe["student"]["model"],
            "teacher": (recipe["train"].get("kd_teacher") if recipe["train"]["objective"] != "sft" else None)
            or recipe["teacher"].get("model") or recipe["teacher"]["backend"],
            "accuracy": round(student["accuracy"], 4), "accuracy_ci95": [round(v, 4) for v in student["accuracy_ci95"]],
            "truncation_rate": student["truncation_rate"], "questions": student["examples"], "max_tokens": student.get("max_tokens"),
            "train_seconds": train["seconds"], "steps": train["stats"]["steps"], **teacher_work(run, manifest),
            **({"on_policy": train["stats"]["on_policy_totals"]} if "on_policy_totals" in train["stats"] else {}),
        }
    questions = {row["questions"] for row in rows.values()}
    if len(questions) != 1:
        raise SystemExit(f"the runs were evaluated on different numbers of questions: {sorted(questions)}")
    result = {"benchmark": "distill_methods", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "runs": rows}
    print(json.dumps(result, indent=2))
    out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished run directory trained with train.objective kd")
    parser.add_argument("--compare", nargs="+", help="finished run directories of one task to put side by side")
    parser.add_argument("--name", help="with --compare: results/distill_methods_NAME.json")
    parser.add_argument("--out", help="result file (default: results/distill_methods.json for runs/kd, "
                                      "results/distill_methods_NAME.json for another run)")
    args = parser.parse_args()
    if args.compare:
        if not args.name and not args.out:
            parser.error("--compare needs --name (or --out)")
        compare([Path(run) for run in args.compare],
                Path(args.out or ROOT / "benchmarks" / "results" / f"distill_methods_{args.name}.json"))
        return
    if not args.run:
        parser.error("give --run RUN (a kd run) or --compare RUN [RUN ...]")
    run = Path(args.run)
    args.out = args.out or str(ROOT / "benchmarks" / "results" / ("distill_methods.json" if run.name == "kd" else
                                                                  f"distill_methods_{run.name}.json"))
    manifest_path = run / "manifest.json"
    if not manifest_path.exists():
        parser.error(f"{run}: no manifest.json; run `tutorlm run kd` first")
    manifest = json.loads(manifest_path.read_text())
    train = manifest["stages"].get("train", {})
    if train.get("status") != "done" or train["config"]["train"]["objective"] != "kd":
        parser.error(f"{run}: its train stage is not a finished kd run")
    recipe = train["config"]
    summary = json.loads((run / "eval" / "summary.json").read_text())

    sft = run.with_name(f"{run.name}-sft")
    sft.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "curated.jsonl", sft / "curated.jsonl")
    recipe_file = sft / "recipe.json"  # the kd run's resolved recipe, as YAML (JSON is YAML)
    recipe_file.write_text(json.dumps({**recipe, "run": {"name": sft.name, "output_dir": str(sft.parent)}}))
    started = time.perf_counter()
    tutorlm("train", str(recipe_file), "--out", str(sft), "--train.objective", "sft")
    tutorlm("eval", str(recipe_file), "--out", str(sft), "--model", "student")
    wall = time.perf_counter() - started
    sft_manifest = json.loads((sft / "manifest.json").read_text())
    sft_summary = json.loads((sft / "eval" / "summary.json").read_text())["student"]

    def side(s: dict, seconds: float | None) -> dict:
        return {"accuracy": round(s["accuracy"], 4), "accuracy_ci95": [round(v, 4) for v in s["accuracy_ci95"]],
                "truncation_rate": s["truncation_rate"], "train_seconds": seconds}

    result = {
        "benchmark": "distill_methods", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
        "task": recipe["task"], "rationales_from": recipe["teacher"]["model"] or recipe["teacher"]["backend"],
        "kd_teacher": recipe["train"].get("kd_teacher") or recipe["teacher"]["model"], "student": recipe["student"]["model"],
        "questions": summary["student"]["examples"], "max_tokens": summary["student"].get("max_tokens"),
        "train_examples": train["stats"]["examples"], "epochs": recipe["train"]["epochs"],
        "kd_settings": {key: recipe["train"].get(key) for key in ("kd_source", "kd_divergence", "kd_beta", "kd_temperature",
                                                                   "kd_ce_weight", "kd_top_k")},
        "kd_stats": {key: value for key, value in train["stats"].get("kd", {}).items() if key != "tokenizers"},
        "sides": {
            "base": side(summary["base"], None),
            "sft": side(sft_summary, sft_manifest["stages"]["train"]["seconds"]),
            "kd": side(summary["student"], train["seconds"]),
            **({"teacher": side(summary["teacher"], None)} if "teacher" in summary else {}),
        },
        "sft_side_wall_s": round(wall, 1),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
