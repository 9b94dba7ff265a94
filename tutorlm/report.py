"""Stage 5, report: what each stage kept, what the teacher cost, and how much the student recovered.

    tutorlm report --out runs/letters      # writes report.md, report.html (self-contained) and *.png

Reads only the run directory: manifest.json, eval/summary.json, eval/<label>.jsonl and
train_log.jsonl. "Accuracy recovered" is (distilled - base) / (teacher - base): the share of the
teacher's lead over the base student that distillation closed.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from tutorlm import metrics
from tutorlm.fit import fit_line
from tutorlm.metrics import truncation_warnings
from tutorlm.run import FUNNEL, ROUNDS, RunDir, StagePlan, atomic_write_text
from tutorlm.tasks import DataError

FIGURES = {"accuracy": "accuracy.png", "funnel": "funnel.png", "loss": "loss.png", "on_policy": "on_policy.png", "rl": "rl.png",
           "learning_curve": "learning_curve.png", "escalation": "escalation.png"}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def gather(run: RunDir) -> dict[str, Any]:
    """Everything the report shows, from the run directory."""
    manifest = run.manifest()
    stages = manifest["stages"]
    summary_path = run.path / "eval" / "summary.json"
    summaries = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    log = _read_jsonl(run.path / "train_log.jsonl")
    config = next((record["config"] for record in sorted(stages.values(), key=lambda r: r["started"])[::-1]), {})
    before, after = summaries.get("base"), summaries.get("student")
    teacher = summaries.get("teacher") or summaries.get("reference")
    recovered = None
    if before and after and teacher:
        recovered = metrics.accuracy_recovered(before["accuracy"], after["accuracy"], teacher["accuracy"])
    curve_path = run.path / "learning_curve.json"
    escalation_path = run.path / "eval" / "escalation.json"
    rounds_path = run.path / ROUNDS
    return {
        "run": str(run.path), "config": config, "stages": stages, "summaries": summaries, "log": log,
        "base": before, "student": after, "teacher": teacher, "recovered": recovered,
        "paired": paired_intervals(run.path / "eval", "teacher" if summaries.get("teacher") else "reference"),
        "learning_curve": json.loads(curve_path.read_text()) if curve_path.exists() else None,
        "escalation": json.loads(escalation_path.read_text()) if escalation_path.exists() else None,
        "rounds": json.loads(rounds_path.read_text()) if rounds_path.exists() else None,
        "funnel": (stages.get("curate") or {}).get("stats", {}).get("funnel"),
        "kept_by_teacher": (stages.get("curate") or {}).get("stats", {}).get("teachers") or {},
        "student_fit": (stages.get("curate") or {}).get("stats", {}).get("student_fit"),
        "generate": (stages.get("generate") or {}).get("stats"), "train": (stages.get("train") or {}).get("stats"),
        "examples": _examples(run, before is not None and after is not None),
    }


def question_scores(path: Path) -> dict[str, float]:
    """Per question of an eval/<label>.jsonl: the share of its samples that were correct ({} without the file)."""
    by_example: dict[str, list[bool]] = {}
    for row in _read_jsonl(path):
        by_example.setdefault(row["example_id"], []).append(bool(row["correct"]))
    return {key: sum(values) / len(values) for key, values in by_example.items()}


def paired_intervals(eval_dir: Path, teacher_label: str = "teacher") -> dict[str, Any] | None:
    """Bootstrap intervals (metrics.paired_bootstrap) for accuracy recovered and student / teacher, over the
    questions that base, student and teacher all answered; None unless all three were evaluated."""
    scores = {label: question_scores(eval_dir / f"{label}.jsonl") for label in ("base", "student", teacher_label)}
    if not all(scores.values()):
        return None
    shared = sorted(set.intersection(*(set(values) for values in scores.values())))
    if not shared:
        return None
    base, student, teacher = ([scores[label][key] for key in shared] for label in ("base", "student", teacher_label))
    return metrics.paired_bootstrap(base, student, teacher)


def recovered_text(paired: dict[str, Any] | None) -> str:
    """'recovered 45% (30%–61%) of the teacher's lead; student / teacher 0.52 (0.38–0.66)' or ''."""
    if not paired or paired["recovered"] is None:
        return ""
    parts = []
    low_high = paired["recovered_ci95"]
    parts.append(f"recovered {paired['recovered']:.0%}" + (f" ({low_high[0]:.0%}–{low_high[1]:.0%})" if low_high else "")
                 + " of the teacher's lead over the base student")
    if paired["student_over_teacher"] is not None:
        low_high = paired["student_over_teacher_ci95"]
        parts.append(f"student / teacher {paired['student_over_teacher']:.2f}"
                     + (f" ({low_high[0]:.2f}–{low_high[1]:.2f})" if low_high else ""))
    return "; ".join(parts) + f" (95% paired bootstrap over {paired['questions']} questions)"


def _examples(run: RunDir, both: bool, count: int = 3) -> list[dict[str, Any]]:
    """A few test questions with the base and the distilled student's answers, fixed ones first."""
    if not both:
        return []
    base = {row["id"]: row for row in _read_jsonl(run.path / "eval" / "base.jsonl")}
    student = _read_jsonl(run.path / "eval" / "student.jsonl")
    pairs = [(base[row["id"]], row) for row in student if row["id"] in base]
    pairs.sort(key=lambda pair: (not (pair[1]["correct"] and not pair[0]["correct"]), not pair[1]["correct"]))
    return [{"question": s["question"], "answer": s["answer"], "before": b["completion"], "before_correct": b["correct"],
             "after": s["completion"], "after_correct": s["correct"]} for b, s in pairs[:count]]


def plot(data: dict[str, Any], directory: Path) -> dict[str, Path]:
    """The report's figures as PNG files; only those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    if data["summaries"]:
        labels = list(data["summaries"])
        values = [data["summaries"][label]["accuracy"] * 100 for label in labels]
        errors = [[v - s["accuracy_ci95"][0] * 100 for v, s in zip(values, data["summaries"].values())],
                  [s["accuracy_ci95"][1] * 100 - v for v, s in zip(values, data["summaries"].values())]]
        figure, axis = plt.subplots(figsize=(6, 3.2))
        bars = axis.bar(labels, values, yerr=errors, capsize=4, color=["#9aa5b1", "#2f80ed", "#27ae60", "#f2994a"][: len(labels)])
        axis.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=3)
        axis.set_ylim(0, 110)
        axis.set_ylabel("accuracy (%) with 95% CI")
        axis.set_title("held-out accuracy")
        written["accuracy"] = _save(figure, directory / FIGURES["accuracy"])
    if data["funnel"]:
        funnel = data["funnel"]
        steps = [("generated", funnel["generated"])]
        remaining = funnel["generated"]
        for key, label in (("truncated", "finished"), ("tool_error", "code ran"), ("tool_timeout", "code in time"),
                           ("no_answer", "answered"), ("wrong", "correct"), ("wrong_step", "steps hold"),
                           ("duplicate", "deduped"),
                           ("too_long", "length ok"), ("not_shortest", "shortest k"), ("not_student_fit", "student fit"),
                           ("over_cap", "capped")):
            if key.startswith("tool_") and not funnel.get(key):  # Python calls: only where a task has the tool
                continue
            remaining -= funnel.get(key, 0)  # runs curated before a step existed lack its count
            steps.append((label, remaining))
        figure, axis = plt.subplots(figsize=(6, 3.2))
        bars = axis.barh([s[0] for s in steps][::-1], [s[1] for s in steps][::-1], color="#2f80ed")
        axis.bar_label(bars, padding=3)
        axis.set_xlabel("rationales")
        axis.set_title("curation funnel")
        written["funnel"] = _save(figure, directory / FIGURES["funnel"])
    train_points = [(row["step"], row["loss"]) for row in data["log"] if "loss" in row]
    eval_points = [(row["step"], row["eval_loss"]) for row in data["log"] if "eval_loss" in row]
    if train_points:
        figure, axis = plt.subplots(figsize=(6, 3.2))
        axis.plot(*zip(*train_points), label="train", color="#2f80ed", alpha=0.8)
        if eval_points:
            axis.plot(*zip(*eval_points), label="held-out", color="#eb5757", marker="o")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (completion tokens)")
        axis.set_title("training loss")
        axis.legend()
        written["loss"] = _save(figure, directory / FIGURES["loss"])
    on_policy = [row for row in data["log"] if "reverse_kl" in row]
    if on_policy:  # on-policy distillation: how close the student's own samples came to the teacher
        steps = [row["step"] for row in on_policy]
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        left.plot(steps, [row["reverse_kl"] for row in on_policy], color="#2f80ed")
        left.set_xlabel("optimizer step")
        left.set_ylabel("nats per graded token")
        left.set_title("reverse KL to the teacher (on samples)")
        for key, label, color in (("top1_agreement", "top-1 agreement", "#27ae60"), ("sample_accuracy", "sample accuracy", "#f2994a")):
            points = [(row["step"], row[key] * 100) for row in on_policy if key in row]
            if points:
                right.plot(*zip(*points), label=label, color=color, marker=".")
        right.set_ylim(0, 105)
        right.set_xlabel("optimizer step")
        right.set_ylabel("%")
        right.set_title("student vs teacher, per step")
        right.legend()
        written["on_policy"] = _save(figure, directory / FIGURES["on_policy"])
    rl = [row for row in data["log"] if "reward_mean" in row]
    if rl:  # GRPO: what the student's samples earned, per step
        steps = [row["step"] for row in rl]
        figure, axis = plt.subplots(figsize=(6, 3.2))
        axis.plot(steps, [row["reward_mean"] for row in rl], color="#2f80ed", alpha=0.5, label="mean reward")
        axis.plot(steps, [row["sample_accuracy"] for row in rl], color="#27ae60", alpha=0.5, label="sample accuracy")
        window = max(1, len(rl) // 10)
        if window > 1:
            smooth = [sum(row["sample_accuracy"] for row in rl[max(0, i - window + 1):i + 1]) / len(rl[max(0, i - window + 1):i + 1])
                      for i in range(len(rl))]
            axis.plot(steps, smooth, color="#27ae60", linewidth=2, label=f"accuracy, mean of {window} steps")
        axis.set_xlabel("optimizer step")
        axis.set_title("GRPO: the student's samples")
        axis.legend()
        written["rl"] = _save(figure, directory / FIGURES["rl"])
    curve = (data.get("learning_curve") or {}).get("points")
    if curve:  # benchmarks/learning_curve.py --into RUN: accuracy against training questions
        figure, axis = plt.subplots(figsize=(6, 3.2))
        sizes = [point["questions"] for point in curve]
        values = [point["accuracy"] * 100 for point in curve]
        errors = [[v - p["accuracy_ci95"][0] * 100 for v, p in zip(values, curve)],
                  [p["accuracy_ci95"][1] * 100 - v for v, p in zip(values, curve)]]
        axis.errorbar(sizes, values, yerr=errors, marker="o", capsize=4, color="#27ae60", label="student")
        for label, color in (("teacher", "#f2994a"), ("base", "#9aa5b1")):
            if data.get(label):
                axis.axhline(data[label]["accuracy"] * 100, color=color, linestyle="--", label=label)
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
        axis.set_xlabel("training questions")
        axis.set_ylabel("held-out accuracy (%)")
        axis.set_ylim(0, 105)
        axis.set_title("learning curve")
        axis.legend()
        written["learning_curve"] = _save(figure, directory / FIGURES["learning_curve"])
    escalation = (data.get("escalation") or {}).get("points")
    if escalation:  # tutorlm serve calibrate: accuracy against the teacher's share of the generated tokens
        figure, axis = plt.subplots(figsize=(6, 4))
        modes = [point for point in escalation if point["mode"] == "escalate"]
        axis.plot([p["teacher_token_share"] * 100 for p in modes], [p["accuracy"] * 100 for p in modes], marker="o", color="#2d9cdb",
                  label="escalate (student's agreement below a threshold)")
        for point in modes:
            axis.annotate(f"{point['agreement']:.2f}", (point["teacher_token_share"] * 100, point["accuracy"] * 100),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)
        steps = sorted((point for point in escalation if point["mode"] == "step"), key=lambda p: p["teacher_token_share"])
        if steps:  # --step-floors: the step mode at each log-prob floor
            axis.plot([p["teacher_token_share"] * 100 for p in steps], [p["accuracy"] * 100 for p in steps], marker="s",
                      color="#9b51e0", label="step (teacher writes lines below a log-prob floor)")
            for point in steps:
                axis.annotate(f"{point['floor']:g}", (point["teacher_token_share"] * 100, point["accuracy"] * 100),
                              textcoords="offset points", xytext=(4, 4), fontsize=7, color="#9b51e0")
        for mode, color, label in (("student", "#27ae60", "student alone (majority of samples)"),
                                   ("student (greedy)", "#1b5e20", "student alone (greedy)"), ("teacher", "#f2994a", "teacher alone")):
            alone = [p for p in escalation if p["mode"] == mode]
            if alone:
                axis.scatter([p["teacher_token_share"] * 100 for p in alone], [p["accuracy"] * 100 for p in alone], s=60,
                             color=color, zorder=3, label=label, marker="D" if "greedy" in mode else "o")
        axis.set_xlabel("teacher's share of generated tokens (%)")
        axis.set_ylabel("accuracy (%)")
        axis.set_ylim(0, 105)
        axis.set_title("serving with the teacher's help")
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)  # below: no point hidden
        written["escalation"] = _save(figure, directory / FIGURES["escalation"])
    return written


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def teachers_table(generate: dict[str, Any], kept: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: each of several teachers' questions, accuracy, cost and share of the curated data."""
    teachers = generate.get("teachers")
    if not teachers:
        return []
    mode = generate.get("teacher_mode", "all")
    lines = ["", f"Several teachers ({'a cascade, cheapest first: each asked only what the ones before it got wrong' if mode == 'cascade' else 'each asked every question'}):", "",
             "| teacher | questions asked | samples | verified | questions solved | calls made | cost | share of curated data |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, one in teachers.items():
        accuracy = one["verified"] / one["samples_written"] if one["samples_written"] else None
        share = kept.get(name, {}).get("kept_share")
        lines.append(f"| {name} | {one['questions']} | {one['samples_written']} | {one['verified']} ({_percent(accuracy)}) | "
                     f"{one['questions_solved']} | {one['calls_made']} | {one['cost'] if one['cost'] is not None else '–'} | "
                     f"{_percent(share)} |")
    return lines


def point_label(point: dict[str, Any]) -> str:
    """Who answers at a point of the curve, in words (the report, and `serve calibrate`'s printed table)."""
    if point["mode"] == "escalate":
        return f"escalate, agreement < {point['agreement']:.2f}"
    if point["mode"] == "step":
        return f"step, log-prob floor {point['floor']:g}"
    return {"student": "student alone (majority of samples)", "student (greedy)": "student alone (greedy)"}.get(
        point["mode"], f"{point['mode']} alone")


def rounds_table(summary: dict[str, Any]) -> list[str]:
    """rounds.json as a markdown table: a row per round, its accuracy, its change, and what it added."""
    lines = ["| round | accuracy (95% CI) | vs the round before (95% CI; p not better) | answers kept | "
             "solved by the student / by the hint | hint tokens (per question it solved) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for entry in summary["rounds"]:
        low, high = entry["accuracy_ci95"]
        versus = entry.get("vs_previous")
        change = (f"{versus['difference'] * 100:+.1f} ({versus['difference_ci95'][0] * 100:+.1f} to "
                  f"{versus['difference_ci95'][1] * 100:+.1f}; p {versus['p_not_better']:.2f})" if versus else "–")
        added = ([str(entry.get("kept", "–")), f"{entry.get('solved_by_student', 0)} / {entry.get('solved_by_hint', 0)}",
                  str(entry.get("hint_tokens", 0)) + (f" ({entry['hint_tokens_per_solved']:g})"
                                                       if entry.get("hint_tokens_per_solved") else "")]
                 if entry["round"] else ["–", "– (the run itself)", "–"])
        lines.append(f"| {entry['round']} | {_percent(entry['accuracy'])} ({_percent(low)}–{_percent(high)}) | {change} | "
                     + " | ".join(added) + " |")
    if summary.get("teacher_tokens_per_rationale"):
        lines += ["", f"The teacher wrote {summary['teacher_tokens_per_rationale']:g} tokens per whole rationale in the run."]
    return lines


def markdown(data: dict[str, Any], figures: dict[str, Path]) -> str:
    config = data["config"]
    task = config.get("task", {})
    lines = [f"# tutorlm report: {Path(data['run']).name}", ""]
    teacher = config.get("teacher", {})
    lines.append(f"Task **{task.get('source', '?')}**{' ' + json.dumps(task.get('options')) if task.get('options') else ''}; "
                 f"teacher **{teacher.get('backend', '?')}**{' ' + teacher['model'] if teacher.get('model') else ''}; "
                 f"student **{config.get('student', {}).get('model', '?')}** ({config.get('train', {}).get('method', '?')} fine-tuning).")
    lines += ["", "## Accuracy", ""]
    if data["summaries"]:
        lines += ["| model | accuracy | 95% CI | tokens per answer | truncated | no answer | questions |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, s in data["summaries"].items():
            lines.append(f"| {label} | {_percent(s['accuracy'])} | {_percent(s['accuracy_ci95'][0])}–{_percent(s['accuracy_ci95'][1])} "
                         f"| {s['mean_completion_tokens']:.0f} | {_percent(s['truncation_rate'])} | {_percent(s['no_answer_rate'])} "
                         f"| {s['examples']} |")
        for warning in truncation_warnings(data["summaries"]):
            lines += ["", f"**Warning:** {warning}"]
        if data["base"] and data["student"]:
            gain = data["student"]["accuracy"] - data["base"]["accuracy"]
            lines += ["", f"Distillation moved the student from {_percent(data['base']['accuracy'])} to "
                          f"{_percent(data['student']['accuracy'])} ({gain * 100:+.1f} points)"
                          + (f", recovering **{_percent(data['recovered'])}** of the teacher's lead "
                             f"(teacher: {_percent(data['teacher']['accuracy'])})." if data["recovered"] is not None else ".")]
            if recovered_text(data.get("paired")):
                lines += ["", recovered_text(data["paired"]).capitalize() + "."]
    else:
        lines.append("No evaluation yet: run `tutorlm eval`.")
    if "accuracy" in figures:
        lines += ["", f"![accuracy]({figures['accuracy'].name})"]
    lines += ["", "## Curation", ""]
    if data["funnel"]:
        lines += ["| step | rationales |", "| --- | --- |"] + [f"| {key.replace('_', ' ')} | {data['funnel'].get(key, 0)} |"
                                                                  for key in FUNNEL]
        if "funnel" in figures:
            lines += ["", f"![funnel]({figures['funnel'].name})"]
        fit = data.get("student_fit")
        if fit:
            line = fit_line(fit)
            lines += ["", line[0].upper() + line[1:] + f" ({fit['rows']} rationales scored; "
                      "mean log-probability of each rationale's tokens under the student)."]
    else:
        lines.append("No curation recorded.")
    lines += ["", "## Teacher cost", ""]
    generate = data["generate"]
    if generate:
        lines += ["| calls made | cache hits | failures | prompt tokens | completion tokens | cost | wall time |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {generate['calls_made']} | {generate['cache_hits']} | {generate['failures']} | {generate['prompt_tokens_total']} "
                  f"| {generate['completion_tokens_total']} | {generate['cost'] if generate['cost'] is not None else '–'} "
                  f"| {generate['wall_s']:.1f} s |", "",
                  f"Teacher: {generate['backend']} `{generate['model']}`. Token counts cover every sample in the traces, "
                  "cached ones included; calls made and cost count only calls paid for in this run."
                  + (" The reference solver has no tokenizer: its counts are words." if generate["backend"] == "reference" else "")]
        lines += teachers_table(generate, data["kept_by_teacher"])
    else:
        lines.append("No generation recorded.")
    lines += ["", "## Training", ""]
    train = data["train"]
    if train:
        final = train["final_eval_loss"]
        rates = [row["tokens_per_s"] for row in data["log"] if "tokens_per_s" in row]
        throughput = f", {sum(rates) / len(rates):.0f} tokens/s while training" if rates else ""
        lines.append(f"{train['steps']} optimizer steps on {train['examples']} examples ({train['held_out']} held out): "
                     f"{train['tokens_seen']} tokens in {train['wall_s']:.0f} s including evaluations and checkpoints{throughput}, "
                     f"precision {train['precision']}" + (f"; final held-out loss {final:.4f}." if final is not None else "."))
        if "loss" in figures:
            lines += ["", f"![loss]({figures['loss'].name})"]
        totals = train.get("on_policy_totals")
        if totals:
            lines += ["", f"On-policy: the student sampled {totals['samples']} completions ({totals['sample_tokens']} tokens, "
                          f"{totals['sampling_s']:.0f} s); the teacher graded {totals['teacher_calls']} of them "
                          f"({totals['teacher_tokens']} tokens, {totals['scoring_s']:.0f} s) and "
                          f"{totals['teacher_cache_hits']} came from the cache."]
        if "on_policy" in figures:
            lines += ["", f"![on-policy]({figures['on_policy'].name})"]
        totals = train.get("grpo_totals")
        if totals:
            accuracy = totals["sample_accuracy"]
            lines += ["", f"GRPO: the student sampled {totals['samples']} completions in {totals['sampled_batches']} batches "
                          f"({totals['sample_tokens']} tokens, {totals['sampling_s']:.0f} s), "
                          f"{_percent(accuracy) if accuracy is not None else 'none'} of them right; "
                          f"{totals['all_equal_groups']} of {totals['groups']} groups had all-equal rewards"
                          + (f" and {totals['all_equal_batches']} batches made no update" if totals["all_equal_batches"] else "")
                          + "."]
        if "rl" in figures:
            lines += ["", f"![grpo]({figures['rl'].name})"]
    else:
        lines.append("No training recorded.")
    curve = data.get("learning_curve")
    if curve and curve.get("points"):
        lines += ["", "## Learning curve", "", f"The recipe retrained on the first N training questions "
                  f"(`benchmarks/learning_curve.py`, {curve.get('date', '')}):", "",
                  "| questions | rationales | accuracy | 95% CI | train s |", "| --- | --- | --- | --- | --- |"]
        for point in curve["points"]:
            low, high = point["accuracy_ci95"]
            lines.append(f"| {point['questions']} | {point['curated']} | {_percent(point['accuracy'])} | "
                         f"{_percent(low)}–{_percent(high)} | {point['train_s']} |")
        if "learning_curve" in figures:
            lines += ["", f"![learning curve]({figures['learning_curve'].name})"]
    rounds = data.get("rounds")
    if rounds and rounds.get("rounds"):
        settings = rounds["settings"]
        lines += ["", "## Self-improvement rounds", "",
                  f"Each round the student answered the training questions {settings['samples']} time(s) at temperature "
                  f"{settings['temperature']}, the verifier kept its right answers, the questions it failed were "
                  + {"none": "left out", "student": "rationalized by the student shown the gold answer",
                     "teacher": "rationalized by the teacher shown the gold answer",
                     "correct": "continued by the teacher from the line before the student's first wrong step"}[settings["rationalize"]]
                  + f", and it trained on them ({'continuing' if settings['start'] == 'continue' else 'from the base'}); "
                  "round 0 is this run's student. Accuracy on the eval questions; the change is paired against the round "
                  "before:", "", *rounds_table(rounds)]
        if rounds.get("stopped"):
            lines += ["", f"The rounds stopped before round {rounds['stopped']['round']}: {rounds['stopped']['why']}."]
    escalation = data.get("escalation")
    if escalation and escalation.get("points"):
        lines += ["", "## Serving with the teacher's help", "",
                  f"`tutorlm serve calibrate` on {escalation['questions']} {escalation['split']} questions, "
                  f"{escalation['samples']} student samples at temperature {escalation['temperature']}"
                  + (f"; the step mode greedy, with at most {escalation['step_teacher_tokens']} teacher tokens an answer "
                     "(its questions to the teacher: those where the teacher wrote a line)" if "step_teacher_tokens" in escalation else "")
                  + ":", "",
                  "| who answers | accuracy | questions to the teacher | teacher's share of tokens | random routing | cut off |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for point in escalation["points"]:
            cut = _percent(point["cut_off"]) if "cut_off" in point else ""
            lines.append(f"| {point_label(point)} | {_percent(point['accuracy'])} | {_percent(point['teacher_share'])} | "
                         f"{_percent(point['teacher_token_share'])} | {_percent(point.get('random_accuracy'))} | {cut} |")
        if "escalation" in figures:
            lines += ["", f"![escalation]({figures['escalation'].name})"]
    if data["examples"]:
        lines += ["", "## Examples: before and after", ""]
        for number, example in enumerate(data["examples"], start=1):
            lines += [f"**{number}. {example['question']}** (gold: `{example['answer']}`)", "",
                      f"*Base student* ({'correct' if example['before_correct'] else 'wrong'}):", "", "```",
                      example["before"].strip() or "(empty)", "```", "",
                      f"*Distilled student* ({'correct' if example['after_correct'] else 'wrong'}):", "", "```",
                      example["after"].strip() or "(empty)", "```", ""]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    for name, record in data["stages"].items():
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', '–')} |")
    return "\n".join(lines) + "\n"


def to_html(markdown_text: str, figures: dict[str, Path]) -> str:
    """A self-contained page: the markdown rendered by a small converter, images embedded as data URIs."""
    images = {path.name: base64.b64encode(path.read_bytes()).decode() for path in figures.values()}
    body, in_code, in_table = [], False, False
    for line in markdown_text.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-", " "}:
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("![") and "](" in line:
            name = line.split("](")[1].rstrip(")")
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{images[name]}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
             "th{background:#f3f5f7}pre{background:#f6f8fa;padding:10px;white-space:pre-wrap;border-radius:4px}"
             "img{max-width:100%}h2{border-bottom:1px solid #eee;padding-bottom:4px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>tutorlm report</title><style>{style}</style></head><body>\n" \
           + "\n".join(body) + "\n</body></html>\n"


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<!\w)\*(.+?)\*(?!\w)", r"<i>\1</i>", text)


def report(run_path: str | Path) -> Path:
    """Write report.md, report.html and the figures; returns the HTML path."""
    run = RunDir(run_path)
    if not run.manifest_path.exists():
        raise DataError(f"{run.manifest_path}: no run here; run the pipeline first (`tutorlm run`)")
    data = gather(run)
    figures = plot(data, run.path)
    text = markdown(data, figures)
    atomic_write_text(run.path / "report.md", text)
    atomic_write_text(run.path / "report.html", to_html(text, figures))
    return run.path / "report.html"


def plan_stage(recipe: Any) -> StagePlan:
    """The dry run's row: the report is always written again (it reads what the other stages left)."""
    return StagePlan("report", "run", f"{recipe.run.path / 'report.html'}")
