"""`train.objective: on_policy` — the student learns on its own samples, and the teacher grades every token.

    tutorlm train --out runs/x --train.objective on_policy --train.kd_teacher TEACHER_DIR \\
        [--train.kd_divergence reverse_kl|jsd|forward_kl] [--train.kd_beta 0.5] [--train.on_policy_lambda 1.0] \\
        [--train.on_policy_max_tokens 128] [--train.on_policy_temperature 1.0]

Method: generalized knowledge distillation (GKD; Agarwal et al. 2024), the on-policy distillation of
MiniLLM and of Thinking Machines' report. For each micro-batch of curated rows, with probability λ
(`on_policy_lambda`) the student samples a completion for each of the batch's questions on its current
weights (the continuous-batching engine, `on_policy_temperature`, at most `on_policy_max_tokens`);
otherwise the batch's own rationales are used, and the step is offline KD. The teacher then scores
every completion token and the student is pulled towards the teacher's full next-token distribution
there by `kd_divergence` (reverse KL is the usual choice on-policy: it is mode-seeking, and on the
student's own samples it penalises exactly the tokens the student would write that the teacher would
not). λ = 0 is the offline KD of train/kd.py; the loss of a step is kd.kd_loss on whichever sequences it got.

The teacher is a local model with the student's tokenizer (`train.kd_teacher`, or the recipe's hf
teacher), held in memory and run in each step. Not built yet (pre-flight says so): a teacher behind a
server, a teacher with another tokenizer, a cache of teacher scores across `--resume`, and adding
the verifier's reward. Each optimizer step logs the share of micro-batches that sampled, the samples'
mean length and stop rate, and the time spent sampling.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from tutorlm.engine import Engine
from tutorlm.errors import PreflightError
from tutorlm.models import stop_ids
from tutorlm.train.data import IGNORE, Tokenized, collate_padded
from tutorlm.train.kd import _load_teacher, _rows, compare_tokenizers, describe, kd_loss


class OnPolicy:
    def __init__(self, recipe: Any) -> None:
        self.config = recipe.train
        self.teacher: Any = None
        self.rng = random.Random(recipe.train.seed)
        self.window: dict[str, float] = {}

    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Any) -> dict[str, Any]:
        config = self.config
        if not (config.kd_teacher or (recipe.teacher.backend == "hf" and recipe.teacher.model)):
            raise PreflightError("train.objective on_policy needs a local teacher to grade the student's samples: set "
                                 "train.kd_teacher (or teacher.backend hf and teacher.model); a teacher behind a server is not supported yet")
        self.teacher, teacher_tokenizer = _load_teacher(recipe, device)
        comparison = compare_tokenizers(tokenizer, teacher_tokenizer, _rows(model), _rows(self.teacher))
        if not comparison["same_vocabulary"]:
            raise PreflightError(f"train.objective on_policy needs a teacher with the student's vocabulary for now: "
                                 f"{describe(comparison)}. Use train.objective kd (it aligns two tokenizers) instead")
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.stop_ids = stop_ids(model, tokenizer)
        console.print(f"on_policy: teacher {config.kd_teacher or recipe.teacher.model} ({describe(comparison)}); the student "
                      f"samples for a share {config.on_policy_lambda} of micro-batches, up to {config.on_policy_max_tokens} "
                      f"tokens at temperature {config.on_policy_temperature}; {config.kd_divergence} (beta {config.kd_beta})")
        return {"on_policy": {"tokenizers": comparison, "lambda": config.on_policy_lambda}}

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if self.rng.random() < self.config.on_policy_lambda:
            batch = self.sample(model, batch)
        else:
            self._count(sampled=0)
        return kd_loss(model, self.teacher, batch, self.config)

    def sample(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's prompts, each followed by a completion the student samples now (with its end token when it
        stopped), as a padded batch on the batch's device."""
        started = time.perf_counter()
        prompts = prompts_of(batch)
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        was_training = inner.training
        inner.eval()
        completions: dict[int, tuple[list[int], str]] = {}
        try:
            engine = Engine(inner, slots=len(prompts), pad_token_id=self.pad_token_id, stop_ids=self.stop_ids)
            seeds = [self.rng.getrandbits(62) for _ in prompts]
            engine.run(prompts, max_tokens=self.config.on_policy_max_tokens, temperature=self.config.on_policy_temperature,
                       seeds=seeds, finished=lambda index, tokens, reason, logprobs, latency:
                       completions.__setitem__(index, (list(tokens), reason)))
        finally:
            inner.train(was_training)
        items = []
        for index, prompt in enumerate(prompts):
            tokens, reason = completions[index]
            if reason == "stop":  # the end token is part of what the student learns to write
                tokens = tokens + [self.eos_token_id]
            items.append(Tokenized(prompt + tokens, [IGNORE] * len(prompt) + tokens))
        self._count(sampled=1, tokens=sum(len(completions[i][0]) for i in completions),
                    stopped=sum(reason == "stop" for _, reason in completions.values()), rows=len(prompts),
                    seconds=time.perf_counter() - started)
        device = batch["input_ids"].device
        return {key: value.to(device) for key, value in collate_padded(items, self.pad_token_id).items()}

    def _count(self, **values: float) -> None:
        self.window["micro_batches"] = self.window.get("micro_batches", 0) + 1
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0) + value

    def log(self) -> dict[str, Any]:
        """What the loop adds to each optimizer step's log line; the window restarts."""
        window, self.window = self.window, {}
        if not window:
            return {}
        entry: dict[str, Any] = {"sampled_share": round(window.get("sampled", 0) / window["micro_batches"], 3)}
        if window.get("rows"):
            entry.update(sample_tokens=round(window["tokens"] / window["rows"], 1),
                         sample_stop_rate=round(window["stopped"] / window["rows"], 3),
                         sampling_s=round(window["seconds"], 3))
        return entry


def prompts_of(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each example's prompt ids (the tokens before its first label), from a padded or a packed batch."""
    input_ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    if "position_ids" in batch and "attention_mask" not in batch:  # packed: one row, positions restart per example
        positions = batch["position_ids"][0].tolist()
        starts = [i for i, position in enumerate(positions) if position == 0] + [len(positions)]
        rows = [(input_ids[0][a:b], labels[0][a:b]) for a, b in zip(starts, starts[1:])]
        # collate_packed masks each example's first label; the prompt is every leading IGNORE
    else:
        rows = list(zip(input_ids, labels))
    prompts = []
    for ids, row_labels in rows:
        first = next((i for i, label in enumerate(row_labels) if label != IGNORE and i > 0), len(row_labels))
        prompts.append(ids[:first])
    return prompts
