"""The student's own attempts (rounds, with the teacher correcting its failures) against more SFT data from the
teacher, at equal CPU time, from the same start.

    pip install -e ".[teacher,teacher-small]"
    tutorlm run mentor-fast        # the start: SmolLM2-135M after 1,100 questions of the mentor's rationales
    python benchmarks/own_attempts.py [--rounds 3] [--limit 300] [--samples 4] [--rationalize correct] [--fresh] \
        [--sft-from benchmarks/results/own_attempts.json] [--tag NAME] [--start-rate SECONDS] [--locate teacher]

Two arms, both continuing from runs/mentor-fast/student:
- rounds: `tutorlm run mentor-fast --rounds.count R ...`, as a user runs it. In each round the student answers
  --limit of its training questions --samples times at T=0.7; the verifier keeps its right answers; the questions it
  got wrong every time are corrected by the recipe's teacher (Qwen2.5-Coder-1.5B, int8) from the line before its
  first wrong step (`correct`: SCoRe), rationalized by the student shown the gold answer (`student`: STaR), or
  left out (`none`); the student trains on what verified (SFT, continuing). With --fresh each round asks new
  questions (`rounds.fresh`), in a copy of the start run (runs/<recipe>-<tag or fresh>), so the start's own rounds
  stay; with --locate teacher (`teacher.locate`) the correcting teacher names the first wrong line where the
  arithmetic check finds none (GSM8K's errors are mostly in the plan), in such a copy too.
  GSM8K: `--recipe gsm8k --start-rate S` (the start's rationales came from the cache: S = the seconds a question of
  teacher data cost the run that wrote them).
- sft: the same CPU time spent on more of what made the start: the mentor (the recipe's cheap teacher) writes
  rationales for fresh training questions (generate.skip past every question the run asked) and the student trains
  on them, continuing from this arm's previous student. Sft step r asks as many questions as bring this arm's
  seconds (generate + curate + train; evaluation is left out of both arms) to the rounds arm's after round r, at
  the seconds per question of its last step (first: of the start run's own generate and train). --sft-from takes
  the steps' question counts from an earlier result instead, so a second rounds arm is compared with the same sft
  arm (a stage of those runs is skipped where its key is unchanged: the mentor's rationales are reused); the
  cumulative seconds of both arms are reported.

Every student of both arms, and the start, is evaluated on the same --eval-limit held-out questions in one
`tutorlm eval` call; each step is compared with the start and the two arms with each other at every step (95%
paired bootstrap). Results: benchmarks/results/own_attempts.json (own_attempts_<tag>.json with --tag).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import commit, machine, tutorlm_run, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tutorlm.config import teacher_generate, to_dict  # noqa: E402
from tutorlm.metrics import accuracy_of, paired_scores  # noqa: E402
from tutorlm.recipe_io import load_recipe  # noqa: E402
from tutorlm.report import question_scores  # noqa: E402

WORK = ("generate", "curate", "train")  # the stages whose seconds make an arm's CPU time (eval excluded)


def stage_seconds(run: Path) -> dict[str, float]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {name: round(stages[name]["seconds"], 1) for name in WORK if name in stages}


def from_root(path: Path) -> str:
    """`path` as the runs' recipes name it: from the repository root (their working directory) where it lies inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sft_recipe(start_recipe, student: str, skip: int, questions: int) -> dict:
    """The sft arm's step as a recipe: the start recipe's cheapest teacher writes for `questions` fresh questions after
    the first `skip`, and `student` trains on them with the start recipe's train settings."""
    mentor = start_recipe.teachers[0] if start_recipe.teachers else start_recipe.teacher
    teacher = {key: value for key, value in vars(mentor).items()
               if value is not None and key in ("backend", "model", "dtype", "batch_size")}
    generate = teacher_generate(start_recipe.generate, mentor)  # with the mentor's own style and token budget
    return {
        "task": {"source": start_recipe.task.source, **({"options": start_recipe.task.options} if start_recipe.task.options else {})},
        "teacher": teacher,
        "generate": {"limit": questions, "skip": skip, "max_tokens": generate.max_tokens,
                     **({"style": generate.style} if generate.style is not None else {})},
        "curate": to_dict(start_recipe.curate),  # the rounds' settings too: the recipe's curate and train
        "student": {**to_dict(start_recipe.student), "model": student, "gguf_file": None},
        "train": to_dict(start_recipe.train),
        "eval": {"limit": start_recipe.eval.limit, "max_tokens": start_recipe.eval.max_tokens,
                 "batch_size": start_recipe.eval.batch_size, "models": ["student"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mentor-fast", help="the start: a finished run of this recipe (runs/<name>)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=300, help="training questions a round asks")
    parser.add_argument("--samples", type=int, default=4, help="answers the student samples per question in a round")
    parser.add_argument("--rationalize", default="correct", choices=("correct", "student", "teacher", "none"))
    parser.add_argument("--eval-limit", type=int, default=500, help="held-out questions every model is evaluated on")
    parser.add_argument("--fresh", action="store_true", help="rounds ask new training questions each round")
    parser.add_argument("--locate", default="arithmetic", choices=("arithmetic", "teacher"),
                        help="with --rationalize correct: how the first wrong step is found (teacher.locate)")
    parser.add_argument("--sft-from", type=Path, help="an earlier own_attempts result whose sft steps to reuse")
    parser.add_argument("--tag", help="results go to own_attempts_<tag>.json")
    parser.add_argument("--start-rate", type=float, help="seconds a question of teacher data cost the start (generate + "
                        "curate + train), for the sft arm's first step when the start's rationales came from the cache")
    args = parser.parse_args()
    if args.rounds < 1 or args.limit < 1 or args.samples < 1 or args.eval_limit < 1:
        parser.error("--rounds, --limit, --samples and --eval-limit must be at least 1")
    recipe = load_recipe(args.recipe)
    start = ROOT / recipe.run.path
    if not (start / "student").is_dir() or not (start / "eval" / "student.jsonl").exists():
        raise SystemExit(f"{start}: no finished run to start from; run `tutorlm run {args.recipe}` first")
    generate_stats = json.loads((start / "manifest.json").read_text())["stages"]["generate"]["stats"]
    if args.start_rate is None and not generate_stats.get("calls_made") and recipe.teacher.backend != "reference":
        raise SystemExit(f"{start}: its generate stage made no teacher calls (its rationales came from the cache), so its "
                         "seconds do not say what a question of teacher data costs; give --start-rate SECONDS (generate + "
                         "curate + train per question, from the run that called the teacher)")
    results = {"benchmark": "own_attempts", "machine": machine(), "versions": versions(), "date": datetime.date.today().isoformat(),
               "commit": commit(),
               "start": str(start.relative_to(ROOT)),
               "settings": vars(args)}
    earlier = json.loads(args.sft_from.read_text())["sft"] if args.sft_from else None
    if earlier is not None and len(earlier) < args.rounds:
        raise SystemExit(f"{args.sft_from}: {len(earlier)} sft steps, fewer than --rounds {args.rounds}")

    # The rounds arm, as a user runs it
    started = time.perf_counter()
    rounds_run, extra = start, []
    if args.fresh or args.locate != "arithmetic":  # in a copy of the start (its round 0), so its own rounds stay as they are
        rounds_run = start.with_name(f"{start.name}-{args.tag or 'fresh'}")
        extra = ["--run.name", rounds_run.name, *(["--rounds.fresh", "true"] if args.fresh else []),
                 *(["--teacher.locate", args.locate] if args.locate != "arithmetic" else [])]
        if not (rounds_run / "manifest.json").exists():
            shutil.copytree(start, rounds_run, ignore=shutil.ignore_patterns("rounds", "rounds.json"))
    tutorlm_run(args.recipe, "--rounds.count", str(args.rounds), "--rounds.limit", str(args.limit),
                "--rounds.samples", str(args.samples), "--rounds.rationalize", args.rationalize, *extra)
    summary = json.loads((rounds_run / "rounds.json").read_text())
    rounds = []
    for entry in summary["rounds"][1:]:
        run = rounds_run / "rounds" / f"round-{entry['round']}"
        rounds.append({**{key: entry.get(key) for key in (
            "round", "questions_after", "questions_asked", "answers", "answers_verified", "solved_by_student",
            "solved_by_hint", "hint_tokens", "hint_tokens_per_solved", "corrected", "error_found", "error_found_by_teacher",
            "student_lines_kept",
            "kept", "train_steps")},
            "seconds": stage_seconds(run)})
        print("rounds", json.dumps(rounds[-1]), flush=True)
    results["rounds_wall_s"] = round(time.perf_counter() - started, 1)
    results["teacher_tokens_per_rationale"] = summary.get("teacher_tokens_per_rationale")

    # The sft arm: each step sized to the matching round's seconds
    base_seconds = stage_seconds(start)
    asked = recipe.questions_asked()
    if asked is None:
        raise SystemExit(f"{args.recipe}: generate.limit is null (the whole split): no fresh questions are left for the sft arm")
    # The first step's rate is the start run's (its generate + curate + train over the questions it asked, a little
    # high where a second teacher's answers were trained on too); every later step is sized to the cumulative seconds
    per_question = args.start_rate if args.start_rate is not None else sum(base_seconds.values()) / asked
    # Students are named from the repository root (the runs' working directory), so a step's train key does not
    # depend on where the checkout lies
    skip, student, sft = recipe.generate.skip + asked, from_root(start / "student"), []
    rounds_s = sft_s = 0.0  # each arm's seconds so far: a step that ran long or short is made up by the next
    for entry in rounds:
        rounds_s += sum(entry["seconds"].values())
        target = rounds_s - sft_s
        questions = earlier[len(sft)]["questions"] if earlier else max(8, round(target / per_question))
        if earlier and earlier[len(sft)]["skip"] != skip:
            raise SystemExit(f"{args.sft_from}: step {len(sft) + 1} passed over {earlier[len(sft)]['skip']} questions, "
                             f"this recipe's would pass over {skip}: a different start")
        run_name = f"own-attempts-sft-{entry['round']}"
        path = ROOT / "runs" / f"{run_name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"run": {"name": run_name}, **sft_recipe(recipe, student, skip, questions)},
                                       sort_keys=False))
        tutorlm_run(str(path))
        run = ROOT / "runs" / run_name
        seconds = stage_seconds(run)
        stats = json.loads((run / "manifest.json").read_text())["stages"]
        sft.append({"step": entry["round"], "questions": questions, "skip": skip, "target_s": round(target, 1),
                    "seconds": seconds, "cumulative_s": round(sft_s + sum(seconds.values()), 1),
                    "rounds_cumulative_s": round(rounds_s, 1), "kept": stats["curate"]["stats"]["funnel"]["kept"],
                    "teacher_tokens": stats["generate"]["stats"].get("completion_tokens_total"),
                    "train_steps": stats["train"]["stats"].get("steps")})
        print("sft", json.dumps(sft[-1]), flush=True)
        per_question = sum(seconds.values()) / questions
        sft_s += sum(seconds.values())
        skip, student = skip + questions, from_root(run / "student")
    results["generate_stats_of_start"] = {key: generate_stats.get(key) for key in ("calls_made", "completion_tokens_total")}

    # Every model on the same held-out questions
    models = {"start": start / "student",
              **{f"rounds-{entry['round']}": rounds_run / "rounds" / f"round-{entry['round']}" / "student" for entry in rounds},
              **{f"sft-{entry['step']}": ROOT / "runs" / f"own-attempts-sft-{entry['step']}" / "student" for entry in sft}}
    out = ROOT / "runs" / (f"own-attempts-eval-{args.tag}" if args.tag else "own-attempts-eval")
    command = [sys.executable, "-m", "tutorlm", "eval", args.recipe, "--out", str(out), "--eval.limit", str(args.eval_limit)]
    for label, path in models.items():
        command += ["--model", f"{label}={path}"]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    scores = {label: question_scores(out / "eval" / f"{label}.jsonl") for label in models}
    accuracy = {}
    for label, values in scores.items():  # "questions" is an sft step's own count: the evaluation's is eval_questions
        accuracy[label] = accuracy_of(values)
        accuracy[label]["eval_questions"] = accuracy[label].pop("questions")

    def paired(first: str, second: str) -> dict:
        return paired_scores(scores[first], scores[second])

    for entry in rounds:
        entry.update(accuracy[f"rounds-{entry['round']}"], vs_start=paired("start", f"rounds-{entry['round']}"))
    for entry in sft:
        entry.update(accuracy[f"sft-{entry['step']}"], vs_start=paired("start", f"sft-{entry['step']}"),
                     rounds_minus_sft=paired(f"sft-{entry['step']}", f"rounds-{entry['step']}"))
    results.update(start_accuracy=accuracy["start"], rounds=rounds, sft=sft)
    name = f"own_attempts_{args.tag}.json" if args.tag else "own_attempts.json"
    target = ROOT / "benchmarks" / "results" / name
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")  # default: --sft-from's Path
    for entry, other in zip(rounds, sft):
        print(f"step {entry['round']}: rounds {entry['accuracy']:.1%} ({sum(entry['seconds'].values()):.0f} s)  "
              f"sft {other['accuracy']:.1%} ({sum(other['seconds'].values()):.0f} s, {other['questions']} questions)  "
              f"rounds - sft {other['rounds_minus_sft']['difference'] * 100:+.1f} points "
              f"({other['rounds_minus_sft']['difference_ci95'][0] * 100:+.1f} to "
              f"{other['rounds_minus_sft']['difference_ci95'][1] * 100:+.1f})")
    print(f"start {accuracy['start']['accuracy']:.1%}; wrote {target}")


if __name__ == "__main__":
    main()
