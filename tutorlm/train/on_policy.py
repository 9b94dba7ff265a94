"""`train.objective: on_policy` — the student learns on its own samples, and the teacher grades every token.

    tutorlm train --out runs/x --train.objective on_policy --train.kd_teacher TEACHER \\
        [--train.on_policy_loss sampled|divergence] [--train.on_policy_lambda 1.0] [--train.on_policy_reward_weight 0] \\
        [--train.on_policy_max_tokens 128] [--train.on_policy_temperature 1.0] [--train.kd_divergence jsd --train.kd_beta 0.5]

Method: on-policy distillation (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024; Thinking Machines'
report). For each micro-batch of curated rows, with probability λ (`on_policy_lambda`) the student
samples `on_policy_samples` completions (default 4) for each of the batch's questions on its current weights
(the continuous-batching engine, `on_policy_temperature`, at most `on_policy_max_tokens`) and the teacher
grades every token it wrote; otherwise the batch's own rationales (the teacher's traces) are used, and the step is offline KD.

Losses (`on_policy_loss`):
- `sampled` (default): reverse KL on the sampled tokens. Each token x_t gets the advantage
  A_t = log p_teacher(x_t) − log p_student(x_t) (a constant), and the loss is −(1/N) Σ A_t log p_student(x_t):
  its gradient is the per-token gradient of KL(student || teacher) on the student's own trajectory. Only
  the teacher's log-probability of each sampled token is needed, so any teacher can grade: a local one,
  one with another tokenizer (tokens cut at other places get no advantage), or one behind a server.
  `on_policy_reward_weight` w adds w · (r − mean r) to the advantages of every token of a sample, r = 1
  when its answer verifies against the gold answer (the verifier as a reward, as KDRL does); the mean is
  over the question's samples (over the micro-batch with one sample a question).
- `divergence`: `kd_divergence` (generalized JSD(β) is GKD's) against the teacher's full distribution
  where it is in memory with the student's vocabulary, else against its top `kd_top_k` (tail bucket);
  `on_policy_targets: top_k` takes the top-k from a local teacher too (graded once and cached, outside the step).
Micro-batches on the teacher's traces (λ < 1) always use the divergence: the sampled estimator is only
unbiased on the student's own samples. λ = 0 is the offline KD of train/kd.py.

Teachers: a local model (`train.kd_teacher`, or the recipe's hf teacher); with the student's vocabulary
it scores the student's token ids, with another the completion text is re-rendered under its chat
template and its tokens are aligned by character span (train/align.py). Or the recipe's teacher with
backend openai: a server that echoes prompt log-probabilities (vLLM); its prompts are rendered with
`train.kd_teacher_tokenizer`'s chat template (default the student's), and the student never holds the
teacher. A server that cannot echo is refused before training, naming the endpoint and its reply.

Grades are cached in RUN_DIR/teacher_scores.sqlite by teacher, prompt and completion ids (not for the
full-distribution path, which re-scores in the step). Sampling seeds come from (train.seed, the number
of micro-batches drawn so far), and that count is saved with each checkpoint, so a resumed run samples
exactly what the killed run sampled after its last checkpoint and pays for none of those grades again.
A teacher server that still fails after the retries stops the run (nothing is trained on missing grades);
`--resume` continues it.

Each optimizer step logs: the share of micro-batches that sampled, the samples' mean length, stop rate
and accuracy (the task's verifier), the per-token reverse KL on sampled tokens, the teacher's mean
log-probability of them and the top-1 agreement of student and teacher, and the seconds spent sampling and grading (the loop logs the step's seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from typing import Any

import torch

from tutorlm.cache import Cache
from tutorlm.errors import PreflightError
from tutorlm.models.load import load_tokenizer, model_fingerprint, stop_ids
from tutorlm.models.tokens import Tokenized, identity_head
from tutorlm.tasks import Example, load_task
from tutorlm.train.kd import kd_loss
from tutorlm.train.losses import NO_TOKEN, group_advantages, linear_cross_entropy, linear_kd_loss, linear_token_logprobs
from tutorlm.train.rollout import (
    completion_hidden,
    completion_text,
    pairs_of,
    prompt_length,
    prompts_of,
    sample_student,
    tool_settings,
    written_mask,
)
from tutorlm.train.teacher import (
    Grades,
    LocalGrader,
    RemoteGrader,
    compare_tokenizers,
    describe,
    load_teacher,
    local_teacher,
    model_and_head,
    output_rows,
    teacher_model_config,
)

SCORES = "teacher_scores.sqlite"  # the teacher's grades of completions, by teacher, prompt and completion ids


class OnPolicy:
    def __init__(self, recipe: Any) -> None:
        self.config = recipe.train
        self.draws = 0  # micro-batches drawn so far: with train.seed, it decides each one's sampling
        self.teacher: Any = None  # a local teacher with the student's vocabulary, for the full-distribution loss
        self.grader: Any = None
        self.cache: Any = None
        self.window: dict[str, float] = {}  # since the last log line
        self.totals: dict[str, float] = {}  # since the start of this process
        self.autocast = contextlib.nullcontext  # the loop's mixed-precision context (loop.Objective)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state.get("draws", 0))

    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Any) -> dict[str, Any]:
        config = self.config
        where, stats = self.setup_grader(recipe, model, tokenizer, rows, examples, device, sampled=config.on_policy_loss == "sampled")
        loss = ("reverse KL on the sampled tokens" + (f" + {config.on_policy_reward_weight} x the verifier's reward"
                                                      if config.on_policy_reward_weight else "")
                if config.on_policy_loss == "sampled" else
                f"{config.kd_divergence} (beta {config.kd_beta}) against the teacher's "
                + ("full distribution" if self.teacher is not None else f"top-{self.k}"))
        console.print(f"on_policy: teacher {where}; the student samples for a share {config.on_policy_lambda} of "
                      f"micro-batches, {config.on_policy_samples} completion(s) a question, up to {config.on_policy_max_tokens} tokens at temperature "
                      f"{config.on_policy_temperature}; loss: {loss}; grades cached in {recipe.run.path / SCORES}")
        return {"on_policy": {"lambda": config.on_policy_lambda, "loss": config.on_policy_loss,
                              "samples": config.on_policy_samples, **stats}}

    def setup_grader(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                     device: Any, sampled: bool) -> tuple[str, dict[str, Any]]:
        """Load or connect the teacher that grades the student's samples; (where it is, what the manifest records).
        `sampled`: only the teacher's log-prob of each sampled token is needed (no top-k, no full distribution)."""
        config, teacher = self.config, recipe.teacher
        self.tokenizer = tokenizer
        self.task = load_task(recipe.task)
        rows_by_id = {str(row["id"]): row for row in rows}
        self.rows_by_prompt = {tuple(example.input_ids[:prompt_length(example.labels)]): rows_by_id.get(example.example_id)
                               for example in examples}
        self.stop_ids = stop_ids(model, tokenizer)
        self.tools = tool_settings(self.task)  # task.tools python: the samples run their code; the loss skips its output
        stats: dict[str, Any] = {}
        name = local_teacher(recipe)
        if name:
            local, teacher_tokenizer = load_teacher(recipe, device)
            comparison = compare_tokenizers(tokenizer, teacher_tokenizer, output_rows(model), output_rows(local))
            model_config = teacher_model_config(recipe)
            self.grader = LocalGrader(local, teacher_tokenizer, tokenizer, comparison["same_vocabulary"], name, config.batch_size,
                                      model_fingerprint(model_config.model, model_config.gguf_file), model_config.dtype)
            if comparison["same_vocabulary"] and not sampled and config.on_policy_targets != "top_k":
                self.teacher = local
            where = f"{name} ({describe(comparison)})"
            stats["tokenizers"] = comparison
        elif teacher.backend == "openai" and teacher.model:
            template = config.kd_teacher_tokenizer or "the student's"
            teacher_tokenizer = load_tokenizer(config.kd_teacher_tokenizer) if config.kd_teacher_tokenizer else tokenizer
            self.grader = RemoteGrader(teacher, teacher_tokenizer, tokenizer, template)
            where = f"{teacher.model} on {teacher.base_url} (prompts rendered with {template} chat template)"
        else:
            raise PreflightError(
                f"train.objective {config.objective} needs a teacher to grade the student's samples: train.kd_teacher "
                "(a local model), teacher.backend hf with teacher.model, or teacher.backend openai (a server that echoes "
                "prompt log-probabilities, such as vLLM)")
        if self.teacher is None and not sampled and config.on_policy_targets == "full":
            raise PreflightError(
                "train.on_policy_targets full needs the teacher's whole distribution in the step: a local teacher "
                f"with the student's vocabulary (this one is {where}); use top_k or auto")
        if self.teacher is None and not sampled and config.kd_temperature != 1.0:
            raise PreflightError("train.kd_temperature must be 1 when the teacher is known by its top-k (a server or "
                                 "another vocabulary): a top-k cannot be re-tempered")
        self.k = 1 if sampled else config.kd_top_k
        self.cache = Cache(recipe.run.path / SCORES)
        self.identity = {**self.grader.identity, "k": self.k, "student_tokenizer": [tokenizer.name_or_path, len(tokenizer)]}
        if isinstance(self.grader, RemoteGrader) and examples:  # the server must echo prompt log-probabilities
            example = examples[0]
            length = prompt_length(example.labels)
            self.grade([example.input_ids[:length]], [example.input_ids[length:]])
            self.window, self.totals = {}, {}
        return where, stats

    # -- one micro-batch ---------------------------------------------------------------------------

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        rng = random.Random(f"{self.config.seed}:{self.draws}")
        self.draws += 1
        on_policy = rng.random() < self.config.on_policy_lambda
        device = batch["input_ids"].device
        rewards, masks = None, None
        if on_policy:
            prompts, completions, finished, masks = self.sample(model, batch, rng)
            rewards = self._rewards(prompts, completions, finished)  # logged as the samples' accuracy
        else:
            prompts, completions, masks = pairs_of(batch)
            self._count(micro_batches=1)
        groups = self.config.on_policy_samples if on_policy else 1  # a question's samples share its prompt's forward
        if self.teacher is not None:  # the full distribution, in the step
            metrics: dict[str, float] = {}

            def hidden_of(model: Any, inner: Any) -> tuple[torch.Tensor, torch.Tensor]:
                return completion_hidden(model, inner, prompts, completions, groups, self.tokenizer.pad_token_id, device, masks)

            result = kd_loss(model, self.teacher, None, self.config, metrics=metrics, hidden_of=hidden_of)
            self._count(**metrics)
            return result
        grades = self.grade(prompts, completions, masks)
        sampled = on_policy and self.config.on_policy_loss == "sampled"
        return self._graded_loss(model, prompts, completions, grades, rewards, sampled=sampled, groups=groups, masks=masks)

    def sample(self, model: Any, batch: dict[str, torch.Tensor], rng: random.Random
               ) -> tuple[list[list[int]], list[list[int]], list[bool], list[list[bool]] | None]:
        """(the batch's prompts, a completion the student samples for each now (with its end token when it stopped),
        whether each stopped, which completion tokens it wrote (None without tools: all))."""
        started = time.perf_counter()
        prompts = [prompt for prompt in prompts_of(batch) for _ in range(self.config.on_policy_samples)]
        completions = sample_student(model, prompts, max_tokens=self.config.on_policy_max_tokens,
                                     temperature=self.config.on_policy_temperature, rng=rng, autocast=self.autocast,
                                     pad_token_id=self.tokenizer.pad_token_id, stop_ids=self.stop_ids, tools=self.tools,
                                     tokenizer=self.tokenizer)
        finished = [completions[index][1] == "stop" for index in range(len(prompts))]
        masks = [written_mask(completions[index], done) for index, done in enumerate(finished)] if self.tools else None
        # the end token is part of what the student learns to write
        tokens = [completions[index][0] + ([self.tokenizer.eos_token_id] if done else []) for index, done in enumerate(finished)]
        self._count(micro_batches=1, sampled=1, rows=len(prompts), tokens=sum(len(completions[i][0]) for i in completions),
                    stopped=sum(finished), sampling_s=time.perf_counter() - started)
        return prompts, tokens, finished, masks

    def grade(self, prompts: list[list[int]], completions: list[list[int]], masks: list[list[bool]] | None = None) -> list[Grades]:
        """The teacher's grades of each completion, from the cache or the teacher (then cached); with `masks`, of the
        tokens the student wrote only (the teacher reads a tool's output but does not grade it)."""
        started = time.perf_counter()
        keys = [hashlib.sha256(json.dumps({**self.identity, "prompt": prompt, "completion": completion}).encode()).hexdigest()
                for prompt, completion in zip(prompts, completions)]
        found = self.cache.get_many_json(keys)
        first: dict[str, int] = {}  # a question's samples can repeat one another: each completion is graded once
        for index, key in enumerate(keys):
            if key not in found:
                first.setdefault(key, index)
        missing = list(first.values())
        if missing:
            items = [(prompts[i], completions[i], self.rows_by_prompt.get(tuple(prompts[i]))) for i in missing]
            for index, grades in zip(missing, self.grader.grade(items, self.k)):
                found[keys[index]] = grades.to_json()
                self.cache.put_json(keys[index], "on-policy-grade", json.dumps(self.grader.identity), found[keys[index]])
        self._count(graded=len(missing), graded_tokens=sum(len(completions[i]) for i in missing),
                    cache_hits=len(keys) - len(missing), scoring_s=time.perf_counter() - started)
        # Always from the stored form: a resumed run learns from exactly the numbers the first run did.
        grades = [Grades.from_json(found[key]) for key in keys]
        if masks is not None:
            grades = [grade.select(torch.tensor(mask, dtype=torch.bool)) for grade, mask in zip(grades, masks)]
        return grades

    def _rewards(self, prompts: list[list[int]], completions: list[list[int]], finished: list[bool]) -> torch.Tensor:
        """1 for each sample whose answer verifies (and that ended), else 0."""
        rewards = []
        for prompt, completion, done in zip(prompts, completions, finished):
            row = self.rows_by_prompt.get(tuple(prompt))
            correct = False
            if row is not None and done:
                example = Example(id=row["example_id"], question=row.get("question", ""), answer=row["answer"],
                                  choices=row.get("choices"))
                correct = self.task.grade(example, completion_text(self.tokenizer, completion)).correct
            rewards.append(float(correct))
        self._count(correct=sum(rewards), verified=len(rewards))
        return torch.tensor(rewards)

    def _graded_loss(self, model: Any, prompts: list[list[int]], completions: list[list[int]], grades: list[Grades],
                     rewards: torch.Tensor | None, sampled: bool, groups: int = 1, masks: list[list[bool]] | None = None
                     ) -> tuple[torch.Tensor, int]:
        """The loss on the completions from the teacher's grades. `groups` > 1: the prompts come in runs of that many
        equal ones (a question's samples). The prompts' shared start, and each group's prompt, run through the student
        once (`completion_hidden`: the same values and gradients as a forward of every full row)."""
        inner, head = model_and_head(model)
        device = next(model.parameters()).device
        with identity_head(inner):
            hidden, targets = completion_hidden(model, inner, prompts, completions, groups, self.tokenizer.pad_token_id, device,
                                                masks)
        if sampled and self.config.on_policy_temperature > 0:
            # the student's samples came from softmax(z / T): its log-probs and gradient are taken at T, as TRL does
            # (greedy samples, T = 0, have no such distribution: they are scored at T = 1)
            hidden = hidden / self.config.on_policy_temperature
        device = hidden.device
        teacher_logprobs = torch.cat([g.logprobs for g in grades]).to(device)  # (N,)
        top_ids = torch.cat([g.top_ids for g in grades]).to(device)  # (N, k)
        top_logprobs = torch.cat([g.top_logprobs for g in grades]).to(device)
        student_logprobs, student_best = linear_token_logprobs(hidden.detach(), head.weight, targets)
        scored = ~torch.isnan(teacher_logprobs)
        has_top = top_ids[:, 0] != NO_TOKEN
        self._count(reverse_kl=float((student_logprobs - teacher_logprobs)[scored].sum()), scored=int(scored.sum()),
                    teacher_logprob=float(teacher_logprobs[scored].sum()),
                    tokens_graded=targets.numel(), agree=int((student_best == top_ids[:, 0])[has_top].sum()), top=int(has_top.sum()))
        if sampled:
            advantages = torch.where(scored, teacher_logprobs - student_logprobs, torch.zeros_like(student_logprobs))
            if not scored.all() and scored.any():
                # Across tokenizers some tokens go ungraded (advantage 0) while graded ones average about -0.9 nats:
                # a token the teacher cannot grade would be preferred to one it can. Graded advantages are centred on
                # their mean instead, so neither kind is favoured.
                advantages = torch.where(scored, advantages - advantages[scored].mean(), advantages)
            if rewards is not None and self.config.on_policy_reward_weight:
                lengths = torch.tensor([g.logprobs.shape[0] for g in grades])
                samples = self.config.on_policy_samples  # centred over a question's samples; one each: over the batch
                centred = group_advantages(rewards, samples if samples > 1 else rewards.numel(), "none")
                centred = centred * self.config.on_policy_reward_weight
                advantages = advantages + centred.repeat_interleave(lengths).to(device)
            return linear_cross_entropy(hidden, head.weight, targets, row_weights=advantages), targets.numel()
        aligned = (top_ids != NO_TOKEN).any(-1)
        loss = linear_kd_loss(hidden[aligned], head.weight, (top_ids[aligned], top_logprobs[aligned]),
                              kind=self.config.kd_divergence, beta=self.config.kd_beta)
        return loss, targets.numel()

    # -- logging -----------------------------------------------------------------------------------

    def _count(self, **values: float) -> None:
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0) + value
            self.totals[key] = self.totals.get(key, 0) + value

    def summary(self) -> dict[str, Any]:
        """What the train stage's stats add at the end: the whole run's sampling and teacher work (this process's)."""
        totals = self.totals
        return {"on_policy_totals": {
            "micro_batches": int(totals.get("micro_batches", 0)), "sampled": int(totals.get("sampled", 0)),
            "samples": int(totals.get("rows", 0)), "sample_tokens": int(totals.get("tokens", 0)),
            "teacher_calls": int(totals.get("graded", 0)), "teacher_tokens": int(totals.get("graded_tokens", 0)),
            "teacher_cache_hits": int(totals.get("cache_hits", 0)),
            "sampling_s": round(totals.get("sampling_s", 0.0), 1), "scoring_s": round(totals.get("scoring_s", 0.0), 1)}}

    def log(self) -> dict[str, Any]:
        """What the loop adds to each optimizer step's log line; the window restarts."""
        window, self.window = self.window, {}
        if not window.get("micro_batches"):
            return {}
        entry: dict[str, Any] = {"sampled_share": round(window.get("sampled", 0) / window["micro_batches"], 3)}
        if window.get("rows"):
            entry.update(sample_tokens=round(window["tokens"] / window["rows"], 1),
                         sample_stop_rate=round(window["stopped"] / window["rows"], 3),
                         sampling_s=round(window["sampling_s"], 3))
        if window.get("verified"):
            entry["sample_accuracy"] = round(window["correct"] / window["verified"], 3)
        if window.get("scored"):
            entry["reverse_kl"] = round(window["reverse_kl"] / window["scored"], 5)
            if "teacher_logprob" in window:  # graded samples (the full-distribution path reports the KL only)
                entry["teacher_logprob"] = round(window["teacher_logprob"] / window["scored"], 5)
            entry["graded_token_share"] = round(window["scored"] / window["tokens_graded"], 3)
        if window.get("top"):
            entry["top1_agreement"] = round(window["agree"] / window["top"], 4)
        if "graded" in window:
            entry.update(scoring_s=round(window["scoring_s"], 3), teacher_calls=int(window["graded"]),
                         teacher_cache_hits=int(window["cache_hits"]))
        return entry


