"""How much signal is in one optimizer step of each method: the gradient noise scale at the method race's start.

    python benchmarks/gradient_noise.py --race runs/race/arith --batches 8

For each objective of a finished method race (its arms' recipes and curated data in `--race`), from the race's
start checkpoint, the gradient of `--batches` independent micro-batches of the race's size (disjoint questions;
fresh samples for the sampling objectives), with the weights fixed. From them (McCandlish et al. 2018, "An
Empirical Model of Large-Batch Training"):

- `cosine`: the mean cosine between two independent batches' gradients (near 1: every batch points the same way;
  near 0: a step is mostly noise);
- `noise_scale_sequences`: B_simple = tr(Σ) / |G|², in sequences: the batch size at which a step's noise equals its
  signal (Σ the per-sequence gradient covariance, G the expected gradient; |G|² estimated without the noise's bias);
- `steps_for_one_signal`: how many of the race's steps average that many sequences;
- the seconds a batch took.

An update with Adam moves every weight by about the learning rate whatever the gradient's size, so a step whose
gradient is mostly noise moves the weights at random; this is what decides whether a method can gain in the few
steps an equal-time race gives it. Writes benchmarks/results/gradient_noise.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import commit, machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = ("sft", "kd", "on_policy", "gkd", "grpo")


def measure(arm: str, race: Path, start: str, batches: int, seed: int) -> dict:
    import torch
    from rich.console import Console

    from tutorlm.recipe_io import load_recipe
    from tutorlm.run import CURATED, read_jsonl
    from tutorlm.train.data import batches as make_batches
    from tutorlm.train.data import preflight
    from tutorlm.train.loop import build_model, objective_for

    recipe = load_recipe(race / f"{arm}.yaml", [("student.model", start), ("train.seed", str(seed))])
    torch.manual_seed(seed)
    model, tokenizer = build_model(recipe)
    model.train()
    rows = read_jsonl(race / arm / CURATED)
    examples, _ = preflight(tokenizer, rows, recipe.train.max_length, "truncate")
    console = Console(file=open(os.devnull, "w"))
    objective = objective_for(recipe)
    objective.prepare(recipe, model, tokenizer, rows, examples, "cpu", console)
    config = recipe.train
    per_question = {"on_policy": config.on_policy_samples, "grpo": config.grpo_group_size}.get(config.objective, 1)
    size = recipe.train.batch_size
    questions = sorted({example.example_id.split("#")[0] for example in examples})
    first_of = {}
    for index, example in enumerate(examples):
        first_of.setdefault(example.example_id.split("#")[0], index)
    if len(questions) < size * batches:
        raise SystemExit(f"{arm}: {len(questions)} questions, fewer than {size} x {batches} disjoint ones")
    parameters = [p for p in model.parameters() if p.requires_grad]
    total = None
    squares, cosines, seconds, previous = 0.0, [], [], None
    for number in range(batches):
        chosen = [first_of[q] for q in questions[number * size:(number + 1) * size]]
        batch = next(make_batches(examples, [chosen], False, tokenizer.pad_token_id))
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = objective.loss(model, batch)[0]
        loss.backward()
        seconds.append(time.perf_counter() - started)
        gradient = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters])
        total = gradient.clone() if total is None else total + gradient
        squares += float(gradient.pow(2).sum())
        if previous is not None and number % 2 == 1:
            denominator = float(previous.norm() * gradient.norm())
            cosines.append(float(previous @ gradient) / denominator if denominator else 0.0)
        previous = gradient
    mean = total / batches
    mean_square = float(mean.pow(2).sum())
    batch_variance = batches / (batches - 1) * (squares / batches - mean_square)  # tr of one batch gradient's covariance
    signal = mean_square - batch_variance / batches  # |G|^2 without the noise's bias
    sequences = size * per_question
    noise_scale = sequences * batch_variance / signal if signal > 0 else None
    return {"arm": arm, "objective": recipe.train.objective, "batch_sequences": sequences, "batches": batches,
            "cosine": round(sum(cosines) / len(cosines), 4) if cosines else None,
            "gradient_norm": round((squares / batches) ** 0.5, 4), "mean_gradient_norm": round(mean_square ** 0.5, 4),
            "noise_scale_sequences": round(noise_scale, 1) if noise_scale is not None else None,
            "signal_below_noise": signal <= 0,
            "steps_for_one_signal": round(noise_scale / sequences, 1) if noise_scale is not None else None,
            "seconds_per_batch": round(sum(seconds) / len(seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--race", default=str(ROOT / "runs" / "race" / "arith"), help="a method race's directory")
    parser.add_argument("--start", help="the checkpoint (default: the race's start, from its sft arm's recipe)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "gradient_noise.json"))
    parser.add_argument("--side", help=argparse.SUPPRESS)  # one arm, in its own process
    args = parser.parse_args()
    race = Path(args.race)
    if args.batches < 2:
        parser.error("--batches must be at least 2")
    import yaml

    start = args.start or yaml.safe_load((race / "sft.yaml").read_text())["student"]["model"]
    if args.side:
        print("RESULT " + json.dumps(measure(args.side, race, start, args.batches, args.seed)), flush=True)
        return
    results = []
    for arm in args.arms.split(","):
        if not (race / f"{arm}.yaml").exists():
            parser.error(f"--arms: {race / (arm + '.yaml')} does not exist (run the race first)")
        command = [sys.executable, __file__, "--race", str(race), "--start", start, "--batches", str(args.batches),
                   "--seed", str(args.seed), "--side", arm]
        done = subprocess.run(command, capture_output=True, text=True)
        line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise SystemExit(f"{arm} failed:\n{done.stderr[-3000:]}")
        result = json.loads(line[len("RESULT "):])
        print(json.dumps(result), flush=True)
        results.append(result)
    shown = lambda path: os.path.relpath(path, ROOT) if Path(path).resolve().is_relative_to(ROOT) else str(path)  # noqa: E731
    output = {"benchmark": "gradient_noise", "race": shown(race), "start": shown(start), "machine": machine(), "versions": versions(), "commit": commit(),
              "date": datetime.date.today().isoformat(), "arms": results}
    Path(args.results).write_text(json.dumps(output, indent=2) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
