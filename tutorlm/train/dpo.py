"""`train.objective: dpo` — learn what not to write: preference pairs of a right and a wrong rationale.

    tutorlm curate --out runs/x --curate.pairs 2           # pairs.jsonl: (kept rationale, wrong rationale) per question
    tutorlm train --out runs/x --train.objective dpo [--train.dpo_beta 0.1] [--train.dpo_loss sigmoid|ipo]

Method: DPO (Rafailov et al. 2023) with the starting student as the reference, or IPO (Azar et al.
2023). The pairs come from curate (`--curate.pairs K`): a rationale whose answer verified (chosen) and
one whose answer was wrong or missing (rejected), for the same question, from the teacher's samples or
the student's own (see curate.py). `batch_size` counts pairs; an epoch is a pass over them.

The reference model's log-probabilities of every chosen and rejected completion are computed once, before
the first step, with the scorer (tutorlm.models.score) on the starting weights, and cached in
RUN_DIR/dpo_reference.sqlite by the student's weight fingerprint and the token ids: a resumed run, or
another run of the same student on the same pairs, does not score them again, and no reference model is
kept in memory.

Each micro-batch runs the student once on its pairs' chosen and rejected completions together. The losses
are pure functions in train/losses.py (`preference_loss`); the gradient goes through the chunked
`linear_cross_entropy`, each token weighted by the loss's derivative with respect to its log-probability,
so no (tokens × vocabulary) logits are kept, and the logged loss is the objective's value. Each step logs
the mean implicit rewards β(log π − log π_ref) of chosen and rejected completions, their margin, and the
share of pairs whose chosen completion has the higher reward (reward accuracy).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from tutorlm.cache import Cache
from tutorlm.errors import PreflightError
from tutorlm.models.load import model_fingerprint
from tutorlm.models.score import score_ids
from tutorlm.models.tokens import IGNORE, Tokenized, collate_padded, identity_head, labelled_positions, tokenize
from tutorlm.run import PAIRS, read_jsonl
from tutorlm.train.losses import linear_cross_entropy, linear_token_logprobs, preference_loss
from tutorlm.train.teacher import model_and_head

REFERENCE = "dpo_reference.sqlite"


class DPO:
    def __init__(self, recipe: Any) -> None:
        self.config = recipe.train
        self.window: dict[str, float] = {}

    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Any) -> dict[str, Any]:
        config = self.config
        path = recipe.run.path / PAIRS
        if not path.exists():
            raise PreflightError(
                f"{path}: no preference pairs; train.objective dpo learns from them: run `tutorlm curate --out "
                f"{recipe.run.path} --curate.pairs 2` (it needs wrong rationales: several samples per question at a "
                "temperature, or the student's own samples)")
        pairs = read_jsonl(path)
        for number, pair in enumerate(pairs, start=1):
            missing = [key for key in ("example_id", "prompt", "chosen", "rejected") if key not in pair]
            if missing:
                raise PreflightError(f"{path}:{number}: missing {', '.join(missing)}; fields present: {', '.join(pair)}")
        training = {row["example_id"] for row in rows}  # the questions held out for the eval loss stay out
        pairs = [pair for pair in pairs if pair["example_id"] in training]
        if not pairs:
            raise PreflightError(f"{path}: no preference pair of a training question (held-out questions are left out)")
        self.pad_token_id = tokenizer.pad_token_id
        self.chosen: list[Tokenized] = []
        self.rejected: list[Tokenized] = []
        over = 0
        for pair in pairs:
            chosen = tokenize(tokenizer, {"prompt": pair["prompt"], "completion": pair["chosen"], "id": pair.get("id")})
            rejected = tokenize(tokenizer, {"prompt": pair["prompt"], "completion": pair["rejected"], "id": pair.get("id")})
            if max(len(chosen.input_ids), len(rejected.input_ids)) > config.max_length:
                over += 1
                chosen, rejected = (Tokenized(item.input_ids[:config.max_length], item.labels[:config.max_length],
                                              item.example_id) for item in (chosen, rejected))
            self.chosen.append(chosen)
            self.rejected.append(rejected)
        # the loop batches the chosen completions; each carries its pair's index to the loss
        examples[:] = [Tokenized(item.input_ids, item.labels, item.example_id, index=index)
                       for index, item in enumerate(self.chosen)]
        # the reference: the starting student's log-probabilities, scored once and cached
        cache = Cache(recipe.run.path / REFERENCE)
        identity = {"student": model_fingerprint(recipe.student.model, recipe.student.gguf_file), "method": config.method}
        items = [_split(item) for item in self.chosen + self.rejected]
        keys = [hashlib.sha256(json.dumps({**identity, "prompt": prompt, "completion": completion}).encode()).hexdigest()
                for prompt, completion in items]
        found = cache.get_many_json(keys)
        missing = [index for index, key in enumerate(keys) if key not in found]
        if missing:
            inner, _ = model_and_head(model)
            scored = score_ids(inner, [items[index] for index in missing], batch_size=config.batch_size,
                               pad_token_id=tokenizer.pad_token_id)
            for index, item in zip(missing, scored):
                found[keys[index]] = list(item.logprobs)
                cache.put_json(keys[index], "dpo-reference", json.dumps(identity), found[keys[index]])
        reference = [found[key] for key in keys]
        self.reference_chosen = [self._sequence(values) for values in reference[:len(pairs)]]
        self.reference_rejected = [self._sequence(values) for values in reference[len(pairs):]]
        console.print(f"dpo: {len(pairs)} preference pairs from {path} ({over} cut at max_length {config.max_length}); "
                      f"{config.dpo_loss} loss, beta {config.dpo_beta}; reference log-probabilities of the starting "
                      f"student: {len(missing)} scored, {len(keys) - len(missing)} from {recipe.run.path / REFERENCE}")
        return {"dpo": {"pairs": len(pairs), "cut": over, "reference_scored": len(missing),
                        "reference_cached": len(keys) - len(missing)}}

    def _sequence(self, logprobs: list[float]) -> float:
        """A completion's log-probability as the loss uses it: summed (sigmoid) or averaged over tokens (ipo)."""
        total = float(sum(logprobs))
        return total / max(len(logprobs), 1) if self.config.dpo_loss == "ipo" else total

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        config = self.config
        if "example_index" not in batch:
            raise PreflightError("train.objective dpo: a batch without pair indices (packing is not supported for dpo)")
        indices = batch["example_index"].tolist()
        device = batch["input_ids"].device
        items = [self.chosen[i] for i in indices] + [self.rejected[i] for i in indices]
        both = {key: value.to(device) for key, value in collate_padded(items, self.pad_token_id).items()}
        inner, head = model_and_head(model)
        inputs, positions, targets_at = labelled_positions(both)
        wanted = targets_at != IGNORE
        with identity_head(inner):
            hidden = model(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted]  # (N, H)
        targets = targets_at[wanted]
        lengths = wanted.sum(dim=1)  # (2P,) tokens of each completion: chosen first, then rejected
        logprobs = linear_token_logprobs(hidden.detach(), head.weight, targets)[0]
        rows = torch.repeat_interleave(torch.arange(len(items), device=logprobs.device), lengths.to(logprobs.device))
        sums = torch.zeros(len(items), device=logprobs.device).index_add_(0, rows, logprobs)
        sequence = sums / lengths.clamp(min=1).to(sums) if config.dpo_loss == "ipo" else sums
        pairs = len(indices)
        chosen, rejected = sequence[:pairs], sequence[pairs:]
        ref_chosen = torch.tensor([self.reference_chosen[i] for i in indices], device=sequence.device)
        ref_rejected = torch.tensor([self.reference_rejected[i] for i in indices], device=sequence.device)
        value, d_chosen, d_rejected = preference_loss(chosen, rejected, ref_chosen, ref_rejected, config.dpo_beta,
                                                      config.dpo_loss)
        # d(mean loss)/d(log-prob of a token) = d loss/d sequence / P (/ length for ipo); linear_cross_entropy divides by N
        per_row = torch.cat([d_chosen, d_rejected]) / pairs
        if config.dpo_loss == "ipo":
            per_row = per_row / lengths.clamp(min=1).to(per_row)
        weights = -per_row[rows] * targets.numel()
        gradient = linear_cross_entropy(hidden, head.weight, targets, row_weights=weights)
        reward_chosen = config.dpo_beta * (chosen - ref_chosen)
        reward_rejected = config.dpo_beta * (rejected - ref_rejected)
        for key, amount in (("pairs", pairs), ("reward_chosen", float(reward_chosen.sum())),
                            ("reward_rejected", float(reward_rejected.sum())),
                            ("reward_right", int((reward_chosen > reward_rejected).sum()))):
            self.window[key] = self.window.get(key, 0) + amount
        return gradient - gradient.detach() + value.mean(), targets.numel()

    def log(self) -> dict[str, Any]:
        window, self.window = self.window, {}
        if not window.get("pairs"):
            return {}
        pairs = window["pairs"]
        chosen, rejected = window["reward_chosen"] / pairs, window["reward_rejected"] / pairs
        return {"reward_chosen": round(chosen, 5), "reward_rejected": round(rejected, 5),
                "reward_margin": round(chosen - rejected, 5), "reward_accuracy": round(window["reward_right"] / pairs, 4)}


def _split(item: Tokenized) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a tokenized example (labels are IGNORE on the prompt)."""
    start = next((i for i, label in enumerate(item.labels) if label != IGNORE), len(item.labels))
    return item.input_ids[:start], item.input_ids[start:]
