"""Distillation methods on the same rationales and questions: SFT vs logit KD, held-out accuracy and wall time.

    tutorlm run kd                                            # first: a run whose objective is kd (the kd recipe)
    python benchmarks/distill_methods.py --run runs/kd        # then: the same student trained with SFT, compared
    tutorlm run kd-qwen && python benchmarks/distill_methods.py --run runs/kd-qwen     # Qwen -> SmolLM2, across tokenizers

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

from _common import machine

ROOT = Path(__file__).resolve().parent.parent


def tutorlm(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tutorlm", *args], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    if result.returncode != 0:
        raise SystemExit(f"tutorlm {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run directory trained with train.objective kd")
    parser.add_argument("--out", help="result file (default: results/distill_methods.json for runs/kd, "
                                      "results/distill_methods_NAME.json for another run)")
    args = parser.parse_args()
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
        "benchmark": "distill_methods", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
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
