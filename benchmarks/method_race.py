"""The method race: from one distilled start, each method gets the same CPU wall time; who is ahead, and when?

    python benchmarks/method_race.py --name gsm8k --task gsm8k --teacher qwen2.5-coder-1.5b-instruct \\
        --teacher-dtype int8 --start runs/race-gsm8k-start/student --minutes 60 --points 4 --test-limit 250

Every arm starts from the same checkpoint (`--start`: the student after SFT on verified rationales in the teacher's
own style) and trains for `--minutes` of wall time on this machine (train.max_minutes: from the start of the train
stage, loading and the objective's preparation included, with the learning-rate schedule run over the minutes),
one arm at a time. The arms:

- `sft`: SFT on more teacher rationales: the teacher writes for `--sft-questions` questions (the start's are cached),
  and its generation time comes out of the arm's minutes
  (a later SFT arm that finds those rationales in the cache pays the minutes the first one measured);
- `on_policy`: on-policy distillation, sampled reverse KL (log p_teacher - log p_student per token of the student's
  own samples; Thinking Machines' form, MiniLLM);
- `gkd`: on-policy GKD, JSD(beta = 0.5) against the teacher's full distribution on the student's samples;
- `kd`: offline logit KD on the start's rationales, the teacher re-scoring each batch (one vocabulary);
- `grpo`: GRPO from the verifier; `kdrl`: GRPO plus the teacher term (KDRL).

Remedies (`--variant NAME=ARM,key=value,...`) are further arms: ARM's settings with train.* overrides, for example
`--variant on_policy_lr1e-5=on_policy,lr=1e-5`; name them in `--arms` with the arms to keep in the table (an arm that
finished with the same recipe is reused, not run again).

Each arm saves its student `--points` times (train.snapshot_minutes); every snapshot and the final student are
evaluated on the same test questions (greedy), so each arm has a curve of accuracy against minutes. Per arm:
the curve, the final accuracy with its 95% Wilson interval, the teacher tokens it used, and the paired bootstrap
against the SFT arm on the same questions (`difference`, `difference_ci95`, `p_not_better`). Results go to
benchmarks/results/method_race.json under `--name` (one entry per testbed), and a plot to
benchmarks/results/method_race_<name>.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import commit, machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tutorlm.metrics import accuracy_of, paired_scores  # noqa: E402
from tutorlm.report import question_scores  # noqa: E402

# Each objective at its own defaults (train.learning_rate: grpo a tenth of SFT's); the sampling arms draw the same
# number of completions a step: on-policy 4 per question of a batch of `--train-batch-size`, GRPO groups of 8 for
# half as many questions.
ARMS = {
    "sft": {"objective": "sft"},
    "on_policy": {"objective": "on_policy", "on_policy_loss": "sampled", "on_policy_temperature": 1.0, "on_policy_samples": 4},
    "gkd": {"objective": "on_policy", "on_policy_loss": "divergence", "kd_divergence": "jsd", "kd_beta": 0.5,
            "on_policy_samples": 4},
    "kd": {"objective": "kd", "kd_source": "teacher"},
    "grpo": {"objective": "grpo", "grpo_group_size": 8},
    "kdrl": {"objective": "grpo", "grpo_group_size": 8, "grpo_teacher_weight": 0.1},
}



def tutorlm(*arguments: str, cwd: Path = ROOT) -> None:
    command = [sys.executable, "-m", "tutorlm", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:  # killed by a signal: no traceback, so say which (SIGKILL is most often the OOM killer)
        how = (f"was killed by signal {-result.returncode}" + (" (out of memory?)" if result.returncode == -9 else "")
               if result.returncode < 0 else f"failed (exit {result.returncode})")
        raise SystemExit(f"{' '.join(command)} {how}:\n{result.stderr[-3000:]}")


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME=ARM[,key=value...]`: a remedy arm, ARM's settings with train.* overrides (values read as YAML)."""
    name, _, spec = text.partition("=")
    base, *pairs = spec.split(",")
    if not name or base not in ARMS or any("=" not in pair for pair in pairs):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=ARM[,key=value...] with ARM one of {', '.join(ARMS)}")
    return name, {**ARMS[base], **{key: scalar(value) for key, value in (pair.split("=", 1) for pair in pairs)}}


def scalar(text: str) -> object:
    """A number where the text is one (YAML reads "1e-5" as a string), else the YAML value."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def start_spec(start: str) -> str:
    """The start as a model spec: a checkpoint directory as an absolute path, else as given (a shipped model's name)."""
    return str(Path(start).resolve()) if Path(start).exists() else start


def arm_recipe(arm: str, args: argparse.Namespace, out: Path) -> dict:
    """The arm's recipe: the start student, the teacher (for the arms that learn from it), the test questions."""
    settings = args.settings[arm]
    questions = args.sft_questions if settings["objective"] == "sft" else args.start_questions
    writer = {"backend": "reference"} if args.writer == "reference" else \
        {"backend": "hf", "model": args.teacher, "dtype": args.teacher_dtype, "batch_size": args.batch_size}
    train = {"epochs": 1000, "max_minutes": args.minutes, "snapshot_minutes": args.minutes / args.points,
             "eval_fraction": 0.0, "batch_size": args.train_batch_size, "save_every": 1_000_000,
             "on_policy_max_tokens": args.sample_tokens, "grpo_max_tokens": args.sample_tokens}
    if args.lr is not None:  # one learning rate for every arm (a variant's lr= still wins)
        train["lr"] = args.lr
    if settings["objective"] == "grpo":
        train["batch_size"] = max(1, args.train_batch_size // 2)
    train.update(settings)
    if settings["objective"] != "sft":
        train.update(kd_teacher=args.teacher, kd_teacher_dtype=args.teacher_dtype)
    return {
        "run": {"name": arm, "output_dir": str(out)},
        "task": {"source": args.task},
        "teacher": writer,
        "generate": {"limit": questions, "max_tokens": args.generate_tokens},
        "student": {"model": start_spec(args.start)},
        "train": train,
        "eval": {"split": "test", "limit": args.test_limit, "max_tokens": args.eval_tokens, "batch_size": args.batch_size,
                 "models": ["student"]},
    }


def sft_reference(result: dict, results: list[dict], args: argparse.Namespace) -> dict | None:
    """The SFT arm an arm is compared with: for another objective, the SFT arm at its learning rate where the race
    ran one (a remedy at another rate is measured against SFT at that rate), else the `sft` arm; an SFT remedy is
    compared with `sft`, and `sft` with nothing."""
    def lr(arm: dict) -> float | None:
        return arm["settings"].get("lr", args.lr)

    if result["arm"] == "sft":
        return None
    sfts = sorted((other for other in results if other["settings"]["objective"] == "sft" and other is not result),
                  key=lambda other: other["arm"] != "sft")  # `sft` first among equals
    if result["settings"]["objective"] != "sft":
        same_rate = [other for other in sfts if lr(other) == lr(result)]
        if same_rate:
            return same_rate[0]
    return next((other for other in sfts if other["arm"] == "sft"), None)


def paid_before(out: Path, recipe: dict) -> tuple[float, int]:
    """The minutes and tokens the teacher spent writing these rationales when an earlier SFT arm of the race had it
    write them: a later SFT arm (a remedy with another learning rate) finds them in the cache, and pays the same."""
    paid = [(0.0, 0)]
    for saved in out.glob("*/race_arm.json"):
        earlier = json.loads(saved.read_text())
        if earlier["recipe"]["train"]["objective"] == "sft" and \
                (earlier["recipe"]["generate"], earlier["recipe"]["teacher"]) == (recipe["generate"], recipe["teacher"]):
            paid.append((earlier["result"].get("generate_minutes", 0.0), earlier["result"].get("teacher_tokens", 0)))
    return max(paid)


def minute_of(snapshot: Path) -> float:
    """The training minute a snapshot (student/snapshots/minute-M) was taken at."""
    return float(snapshot.name.split("-")[1])


def run_arm(arm: str, args: argparse.Namespace, out: Path) -> dict:
    settings = args.settings[arm]
    sft = settings["objective"] == "sft"
    recipe = arm_recipe(arm, args, out)
    path = out / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run = out / arm
    started = time.perf_counter()
    tutorlm("generate", str(path))
    generate_stats = json.loads((run / "manifest.json").read_text())["stages"]["generate"]["stats"]
    minutes = args.minutes
    spent_generating, teacher_tokens = max((generate_stats.get("wall_s", 0.0) / 60, generate_stats.get("completion_tokens", 0)),
                                           paid_before(out, recipe)) if sft else (0.0, 0)
    if sft:  # the teacher's new rationales are paid for out of this arm's minutes
        minutes = max(args.minutes - spent_generating, args.minutes / 100)
    tutorlm("run", str(path), "--train.max_minutes", f"{minutes:g}", "--train.snapshot_minutes", f"{args.minutes / args.points:g}")
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    train_stats = manifest["train"]["stats"]
    # the snapshot taken as the minutes ran out is the final student: evaluated once, as the final point
    snapshots = sorted((snapshot for snapshot in (run / "student" / "snapshots").glob("minute-*")
                        if minute_of(snapshot) < minutes * 0.999), key=minute_of)
    points = []
    for snapshot in snapshots:
        label = f"snapshot-{snapshot.name}"
        tutorlm("eval", str(path), "--out", str(run), "--model", f"{label}={snapshot}")
        points.append({"minutes": round(spent_generating + minute_of(snapshot), 3),
                       **accuracy_of(question_scores(run / "eval" / f"{label}.jsonl"))})
    scores = question_scores(run / "eval" / "student.jsonl")
    final = accuracy_of(scores)
    points.append({"minutes": round(spent_generating + train_stats["train_minutes"], 3), **final})
    totals = train_stats.get("on_policy_totals") or {}
    # graded samples count what the teacher graded; the full-distribution path (gkd) scores every sampled token
    full = settings.get("on_policy_loss") == "divergence"
    teacher_tokens += totals.get("teacher_tokens", 0) or (totals.get("sample_tokens", 0) if full else 0)
    teacher_tokens += (train_stats.get("grpo_totals") or {}).get("teacher_tokens", 0)
    if settings["objective"] == "kd":  # the teacher scores every token the student trains on
        teacher_tokens += train_stats.get("tokens_seen", 0)
    return {"arm": arm, "settings": settings, "commit": commit(), "points": points, "diagnostics": diagnostics(run / "train_log.jsonl"), "final": final, "steps": train_stats["steps"],
            "train_minutes": train_stats["train_minutes"], "generate_minutes": round(spent_generating, 2),
            "teacher_tokens": teacher_tokens, "wall_minutes": round((time.perf_counter() - started) / 60, 2),
            "scores": scores}


DIAGNOSED = ("loss", "reverse_kl", "teacher_logprob", "top1_agreement", "sample_accuracy", "sample_tokens", "all_equal_share",
             "teacher_reverse_kl", "reward_mean", "clip_fraction")


def diagnostics(log: Path) -> dict:
    """Each logged diagnostic's mean over the first and the last quarter of the arm's optimizer steps."""
    steps = [row for row in map(json.loads, log.read_text().splitlines()) if "loss" in row] if log.exists() else []
    quarter = max(1, len(steps) // 4)
    found = {}
    for key in DIAGNOSED:
        first = [row[key] for row in steps[:quarter] if key in row]
        last = [row[key] for row in steps[-quarter:] if key in row]
        if first and last:
            found[key] = {"first_quarter": round(sum(first) / len(first), 4), "last_quarter": round(sum(last) / len(last), 4)}
    return found


def plot(name: str, arms: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for arm in arms:
        axes.plot([0] + [p["minutes"] for p in arm["points"]], [arm["start"]] + [p["accuracy"] for p in arm["points"]],
                  marker="o", label=arm["arm"])
    axes.set_xlabel("CPU wall minutes (teacher time included)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"method race: {name}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the testbed's name in the results file")
    parser.add_argument("--task", required=True)
    parser.add_argument("--teacher", required=True, help="the teacher's model spec (one tokenizer with the student)")
    parser.add_argument("--teacher-dtype", default="auto")
    parser.add_argument("--start", required=True, help="the start every arm trains from: a checkpoint, or a model spec (the base student)")
    parser.add_argument("--writer", choices=["teacher", "reference"], default="teacher",
                        help="who writes the rationales the arms' prompts come from (reference: the task's solver)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--points", type=int, default=4, help="snapshots per arm for the curve")
    parser.add_argument("--arms", default=",".join(ARMS), help="the arms to run (finished ones are reused), variants included")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=ARM[,key=value...]",
                        help="a remedy arm: ARM's settings with train.* overrides, e.g. on_policy_lr1e-5=on_policy,lr=1e-5")
    parser.add_argument("--start-questions", type=int, default=300, help="questions the start's rationales covered")
    parser.add_argument("--sft-questions", type=int, default=1000, help="the sft arm's questions (more rationales)")
    parser.add_argument("--test-limit", type=int, default=250)
    parser.add_argument("--generate-tokens", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--sample-tokens", type=int, default=256, help="the longest completion the sampling arms draw")
    parser.add_argument("--batch-size", type=int, default=32, help="rows decoded together")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, help="train.lr for every arm (default: each objective's own default)")
    parser.add_argument("--start-eval", help="the start's eval file (eval/*.jsonl) from its own run, at the race's test "
                        "questions and token budget: reused instead of evaluating the start again")
    parser.add_argument("--out", default=str(ROOT / "runs" / "race"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "method_race.json"))
    args = parser.parse_args()
    args.settings = {**ARMS, **dict(args.variant)}
    arms = args.arms.split(",")
    if unknown := set(arms) - set(args.settings):
        parser.error(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(args.settings)}")
    start, start_scores = None, None
    if args.start_eval:  # checked before anything is written
        if not Path(args.start_eval).is_file():
            parser.error(f"--start-eval {args.start_eval}: no such file")
        try:
            start_scores = question_scores(Path(args.start_eval))
            start = accuracy_of(start_scores)
        except (ValueError, KeyError, TypeError) as error:
            parser.error(f"--start-eval {args.start_eval}: not an eval file of scored answers ({error!r})")
        if start["questions"] != args.test_limit:
            parser.error(f"--start-eval {args.start_eval}: {start['questions']} questions scored, the race tests {args.test_limit}")
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    start_run = out / "start"
    if start is None:  # the start's evaluation, unless --start-eval gave its file
        path = out / "start.yaml"
        recipe = arm_recipe("sft", args, out)
        recipe["run"]["name"] = "start"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        tutorlm("eval", str(path), "--out", str(start_run), "--model", f"start={start_spec(args.start)}")
        start_scores = question_scores(start_run / "eval" / "start.jsonl")
        start = accuracy_of(start_scores)
    results_path = Path(args.results)
    saved = json.loads(results_path.read_text()) if results_path.exists() else {"testbeds": {}}
    measured_at = saved["testbeds"].get(args.name, {}).get("commit")  # for arms finished before arms named their commit
    results = []
    for arm in arms:
        saved_arm = out / arm / "race_arm.json"  # an arm that finished is not run again (a stopped race resumes)
        if saved_arm.exists() and json.loads(saved_arm.read_text()).get("recipe") == arm_recipe(arm, args, out):
            result = json.loads(saved_arm.read_text())["result"]
            result.setdefault("commit", measured_at)
            print(f"arm {arm}: finished before, its result reused", flush=True)
        else:
            print(f"arm {arm}: {args.minutes:g} minutes", flush=True)
            result = run_arm(arm, args, out)
            saved_arm.write_text(json.dumps({"recipe": arm_recipe(arm, args, out), "result": result}))
        result["start"] = start["accuracy"]
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "scores"}), flush=True)
    for result in results:
        result["vs_start"] = paired_scores(start_scores, result["scores"])
        reference = sft_reference(result, results, args)
        if reference is not None:
            result["vs_sft"], result["vs_sft_arm"] = paired_scores(reference["scores"], result["scores"]), reference["arm"]
    saved["benchmark"] = "method_race"
    saved["testbeds"][args.name] = {
        "task": args.task, "teacher": f"{args.teacher} ({args.teacher_dtype})", "start": args.start, "start_accuracy": start,
        "start_eval": args.start_eval or str(start_run / "eval" / "start.jsonl"),
        "minutes": args.minutes, "machine": machine(), "versions": versions(), "commit": commit(), "date": datetime.date.today().isoformat(),
        "arms": [{k: v for k, v in result.items() if k != "scores"} for result in results],
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(saved, indent=2) + "\n")
    plot(args.name, results, results_path.with_name(f"method_race_{args.name}.png"))
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
