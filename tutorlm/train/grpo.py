"""`train.objective: grpo` — reinforcement learning from the verifier, with an optional teacher term (KDRL).

    tutorlm train --out runs/x --train.objective grpo [--train.grpo_group_size 8] [--train.grpo_max_tokens 256] \\
        [--train.grpo_scale_rewards group|batch|none] [--train.grpo_loss_aggregation token|sequence] \\
        [--train.grpo_iterations 1] [--train.grpo_epsilon_low 0.2 --train.grpo_epsilon_high 0.28] [--train.grpo_beta 0] \\
        [--train.grpo_teacher_weight 0]

Method: GRPO (Shao et al. 2024, DeepSeekMath), with the variants the follow-ups introduced: Dr. GRPO's
unscaled advantages (Liu et al. 2025), DAPO's token-level aggregation, clip-higher and dynamic sampling
(Yu et al. 2025), and KDRL's teacher term (Xu et al. 2025). The questions are the run's curated ones,
one per question (the rationales are not used; their gold answers are), batch_size questions per
micro-batch, so `epochs` counts passes over the questions.

Each micro-batch: the student samples G (`grpo_group_size`) completions per question on its current
weights (the continuous-batching engine, `grpo_temperature`, at most `grpo_max_tokens`); each gets a
reward from the task's verifier (1 when its answer is right; 0 when wrong or unfinished), plus the
optional terms `grpo_format_reward` (a final answer is stated), −`grpo_overlong_penalty` (cut off at
the limit) and −`grpo_length_penalty` × tokens / limit. Advantages are rewards minus the group's mean
(divided by the group's or the batch's reward std, or not: `grpo_scale_rewards`). A group whose rewards
are all equal has advantage 0 everywhere; with `grpo_skip_equal` it is left out of the update, and
`grpo_refill` rounds of extra questions (from the curated ones, seeded) are sampled to replace it. With a
teacher term (below) no group is left out: the teacher's grades teach an all-wrong group too.

Loss per sampled token t of sample i: PPO's clipped surrogate −min(ρ A_i, clip(ρ, 1−ε_low, 1+ε_high) A_i)
with ρ = π(x_t)/π_old(x_t), plus β × the k3 estimate of KL(π || π_ref) to the starting student
(`grpo_beta`, default 0: no reference model in memory), plus w × the reverse KL to the teacher on the
sampled token, log π(x_t) − log π_teacher(x_t) (`grpo_teacher_weight`; the teacher grades the student's
tokens through on_policy's graders: a local model of any vocabulary or a server that echoes prompt
log-probabilities, with grades cached in RUN_DIR/teacher_scores.sqlite). With `grpo_iterations` μ = 1
(default) ρ = 1 and the surrogate is the plain policy gradient; with μ > 1 one sampled batch serves μ
consecutive optimizer steps, π_old being the policy that sampled it. Aggregation (`grpo_loss_aggregation`):
the mean over every token of the batch (token, DAPO's), or over each sample's tokens and then over
samples (sequence, the original GRPO).

The gradient goes through the chunked `linear_cross_entropy` with each token's gradient weight (the
loss functions in train/losses.py give them), so no (tokens × vocabulary) tensor of logits is kept;
the value logged as the step's loss is the objective above. The update's forward runs each group's prompt
once, not G times (`shared_prompt_hidden`: its keys and values, with gradients, repeated for the G
completions), which gives the same values and gradients as G full sequences.

Sampling seeds come from (train.seed, the number of sampled batches so far); that count, and a batch
still being reused under μ > 1, are saved with each checkpoint, so a resumed run samples exactly what
the killed run would have.

Each optimizer step logs: the mean reward, the samples' accuracy, the share of groups whose rewards were
all equal, the groups in the update, mean completion length and stop rate, the policy's entropy on its
tokens, the clipped share of tokens, the KL to the reference (β > 0) and to the teacher (w > 0), and the
seconds spent sampling and grading (the loop adds the step's total and the update's share). A step in
which every group's rewards were equal is logged with `all_equal: true` and makes no update.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from typing import Any

import torch

from tutorlm.errors import PreflightError
from tutorlm.models.load import stop_ids
from tutorlm.models.tokens import Tokenized, identity_head
from tutorlm.run import CURATED
from tutorlm.tasks import Example, load_task
from tutorlm.train.data import sft_loss
from tutorlm.train.losses import clipped_surrogate, group_advantages, k3_kl, linear_cross_entropy, linear_token_logprobs
from tutorlm.train.on_policy import OnPolicy
from tutorlm.train.rollout import (
    completion_hidden,
    completion_text,
    prompt_length,
    prompts_of,
    sample_student,
    tool_settings,
    written_mask,
)
from tutorlm.train.teacher import model_and_head


class GRPO:
    def __init__(self, recipe: Any) -> None:
        self.config = recipe.train
        self.draws = 0  # sampled batches so far: with train.seed, it decides each one's sampling
        self.batch: dict[str, Any] | None = None  # the sampled batch being reused (grpo_iterations > 1)
        self.reference: Any = None
        self.teacher_term: OnPolicy | None = None
        self.window: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self.all_equal_steps = 0
        self.autocast = contextlib.nullcontext  # the loop's mixed-precision context (loop.Objective)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state.get("draws", 0))
        self.batch = state.get("batch")

    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Any) -> dict[str, Any]:
        config = self.config
        self.tokenizer, self.console = tokenizer, console
        self.task = load_task(recipe.task)
        lacking = [row for row in rows if row.get("answer") in (None, "")]
        if lacking:
            raise PreflightError(
                f"{recipe.run.path / CURATED}: {len(lacking)} of {len(rows)} rows have no gold answer (e.g. id "
                f"{lacking[0].get('id')!r}): train.objective grpo rewards answers the verifier checks against one")
        rows_by_id = {str(row["id"]): row for row in rows}
        unique: dict[str, Tokenized] = {}
        for example in examples:  # one per question: the rationales are not used, only the questions
            question = str(rows_by_id[example.example_id]["example_id"]) if example.example_id in rows_by_id else example.example_id
            unique.setdefault(question, example)
        examples[:] = list(unique.values())
        self.rows_by_prompt = {tuple(example.input_ids[:prompt_length(example.labels)]): rows_by_id.get(example.example_id)
                               for example in examples}
        self.pool = list(self.rows_by_prompt)  # what refill rounds draw from
        self.stop_ids = stop_ids(model, tokenizer)
        self.tools = tool_settings(self.task)  # task.tools python: the samples run their code; the loss skips its output
        stats: dict[str, Any] = {"questions": len(examples), "group_size": config.grpo_group_size}
        terms = []
        if config.grpo_beta:
            inner, _ = model_and_head(model)
            self.reference = copy.deepcopy(inner).eval().requires_grad_(False)
            terms.append(f"{config.grpo_beta} x KL to the starting student")
        if config.grpo_teacher_weight:
            self.teacher_term = OnPolicy(recipe)
            where, teacher_stats = self.teacher_term.setup_grader(recipe, model, tokenizer, rows, examples, device, sampled=True)
            stats["teacher"] = {"where": where, **teacher_stats}
            terms.append(f"{config.grpo_teacher_weight} x reverse KL to the teacher {where}")
        console.print(
            f"grpo: {len(examples)} questions, {config.batch_size} per micro-batch x {config.grpo_group_size} samples "
            f"(up to {config.grpo_max_tokens} tokens at temperature {config.grpo_temperature}); advantages scaled by "
            f"{config.grpo_scale_rewards}, {config.grpo_loss_aggregation}-level loss, clip [1-{config.grpo_epsilon_low}, "
            f"1+{config.grpo_epsilon_high}], {config.grpo_iterations} step(s) per sampled batch"
            + (f"; plus {', '.join(terms)}" if terms else ""))
        return {"grpo": stats}

    # -- one micro-batch ---------------------------------------------------------------------------

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        config = self.config
        if self.batch is None or self.batch["uses"] >= config.grpo_iterations:
            self.batch = self.sample_batch(model, prompts_of(batch))
        sampled = self.batch
        sampled["uses"] += 1
        prompts, completions = sampled["prompts"], sampled["completions"]
        masks = sampled.get("masks") or [[True] * len(completion) for completion in completions]  # which tokens it wrote
        if not prompts:  # every group's rewards were equal: nothing to learn from, no division by zero
            self.all_equal_steps += 1
            self._count(all_equal=1)
            if self.all_equal_steps in (1, 10, 100) or self.all_equal_steps % 1000 == 0:
                right, wrong = int(self.totals.get("all_right_groups", 0)), int(self.totals.get("all_wrong_groups", 0))
                advice = ("most were all wrong: easier questions, a larger grpo_group_size, or a student distilled first"
                          if wrong >= right else "most were all right: harder questions, or a larger grpo_group_size")
                self.console.print(f"grpo: all rewards of a sampled batch were equal ({self.all_equal_steps} batch(es) so "
                                   f"far; of all groups with equal rewards, {wrong} were all wrong and {right} all right): "
                                   f"no update from it ({advice})")
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every process must run the model's forward and backward for DDP: a zero loss through the whole model
                return sft_loss(model, batch)[0] * 0.0, 0
            parameter = next(p for p in model.parameters() if p.requires_grad)
            return (parameter.sum() * 0.0), 0
        device = batch["input_ids"].device
        inner, head = model_and_head(model)
        pad = self.tokenizer.pad_token_id
        with identity_head(inner):
            hidden, targets = completion_hidden(model, inner, prompts, completions, config.grpo_group_size, pad, device, masks)
        # The policy that sampled is softmax(z / T): its log-probs, the ratios and the gradient are taken at T (as TRL
        # does), by scaling the hidden states, since z = hidden @ W.T. At T = 0.3 the update at T = 1 pointed along the
        # true gradient at cosine 0.70 only.
        hidden = hidden / config.grpo_temperature
        logprobs, _, entropy = linear_token_logprobs(hidden.detach(), head.weight, targets, entropy=True)
        lengths = torch.tensor([sum(mask) for mask in masks])  # the tokens each sample's model wrote
        if sampled.get("old_logprobs") is None:  # the first step on this batch: the policy that sampled it
            sampled["old_logprobs"] = logprobs.tolist()
        old = torch.tensor(sampled["old_logprobs"], device=logprobs.device)
        advantages = torch.tensor(sampled["advantages"], device=logprobs.device).repeat_interleave(lengths.to(logprobs.device))
        value, weights, clipped = clipped_surrogate(logprobs, old, advantages, config.grpo_epsilon_low, config.grpo_epsilon_high)
        counts = {"groups_updated": len(completions) // config.grpo_group_size, "tokens_updated": targets.numel(), "clipped": int(clipped.sum()), "entropy": float(entropy.sum())}
        if self.reference is not None:
            if next(self.reference.parameters()).device != hidden.device:  # copied before accelerate placed the student
                self.reference.to(hidden.device)
            reference_head = self.reference.get_output_embeddings()
            with torch.no_grad(), identity_head(self.reference):
                reference_hidden, _ = completion_hidden(self.reference, self.reference, prompts, completions,
                                                        config.grpo_group_size, pad, device, masks)
            reference_logprobs = linear_token_logprobs(reference_hidden / config.grpo_temperature, reference_head.weight,
                                                       targets)[0]
            kl, kl_weights = k3_kl(logprobs, reference_logprobs)
            value, weights = value + config.grpo_beta * kl, weights + config.grpo_beta * kl_weights
            counts["kl"] = float(kl.sum())
        if self.teacher_term is not None:
            started = time.perf_counter()
            grades = self.teacher_term.grade(prompts, completions, masks)
            teacher = torch.cat([grade.logprobs for grade in grades]).to(logprobs.device)
            graded = ~torch.isnan(teacher)
            gap = torch.where(graded, logprobs - teacher, torch.zeros_like(logprobs))  # the reverse KL's estimate
            value, weights = value + config.grpo_teacher_weight * gap, weights - config.grpo_teacher_weight * gap
            counts.update(teacher_kl=float(gap.sum()), teacher_graded=int(graded.sum()),
                          scoring_s=time.perf_counter() - started)
        if config.grpo_loss_aggregation == "sequence":  # each sample's tokens weigh 1 / its length, samples equally
            scale = (targets.numel() / (len(completions) * lengths.float())).repeat_interleave(lengths).to(logprobs.device)
            value, weights = value * scale, weights * scale
        self._count(**counts)
        gradient = linear_cross_entropy(hidden, head.weight, targets, row_weights=weights)
        # The value is the objective's; the gradient is the weighted cross-entropy's, which is the objective's gradient.
        return gradient - gradient.detach() + value.mean(), targets.numel()

    def sample_batch(self, model: Any, prompts: list[list[int]]) -> dict[str, Any]:
        """G samples for each prompt, their rewards and advantages; groups whose rewards are all equal are left out
        (and replaced from the pool, `grpo_refill` rounds at most) when `grpo_skip_equal`."""
        config = self.config
        rng = random.Random(f"{config.seed}:{self.draws}")
        self.draws += 1
        wanted = len(prompts)
        groups = self.sample_groups(model, prompts, rng)
        # With a teacher term a group of equal rewards still has something to learn: the teacher's grades.
        skip = config.grpo_skip_equal and not config.grpo_teacher_weight
        kept = [group for group in groups if not skip or len(set(group["rewards"])) > 1]
        for _ in range(config.grpo_refill if skip else 0):
            if len(kept) >= wanted:
                break
            extra = rng.sample(self.pool, min(wanted - len(kept), len(self.pool)))
            more = self.sample_groups(model, [list(prompt) for prompt in extra], rng)
            self._count(refilled=len(more))
            kept += [group for group in more if len(set(group["rewards"])) > 1]
        kept = kept[:wanted]
        if not kept:
            return {"prompts": [], "completions": [], "masks": [], "advantages": [], "old_logprobs": None, "uses": 0}
        rewards = torch.tensor([reward for group in kept for reward in group["rewards"]])
        advantages = group_advantages(rewards, config.grpo_group_size, config.grpo_scale_rewards)
        return {"prompts": [group["prompt"] for group in kept for _ in group["completions"]],
                "completions": [completion for group in kept for completion in group["completions"]],
                "masks": [mask for group in kept for mask in group["masks"]],
                "advantages": advantages.tolist(), "old_logprobs": None, "uses": 0}

    def sample_groups(self, model: Any, prompts: list[list[int]], rng: random.Random) -> list[dict[str, Any]]:
        config, size = self.config, self.config.grpo_group_size
        started = time.perf_counter()
        asked = [prompt for prompt in prompts for _ in range(size)]
        results = sample_student(model, asked, max_tokens=config.grpo_max_tokens, temperature=config.grpo_temperature,
                                 rng=rng, autocast=self.autocast, pad_token_id=self.tokenizer.pad_token_id,
                                 stop_ids=self.stop_ids, tools=self.tools, tokenizer=self.tokenizer)
        groups = []
        for start in range(0, len(asked), size):
            group: dict[str, Any] = {"prompt": asked[start], "completions": [], "masks": [], "rewards": [], "correct": []}
            for index in range(start, start + size):
                tokens, reason, _ = results[index]
                done = reason == "stop"
                group["masks"].append(written_mask(results[index], done))
                reward, correct = self.reward(asked[index], tokens, done)
                group["rewards"].append(reward)
                group["correct"].append(correct)
                group["completions"].append(tokens + ([self.tokenizer.eos_token_id] if done else []))  # the end is learned too
            groups.append(group)
        equal = [group for group in groups if len(set(group["rewards"])) == 1]
        self._count(all_wrong_groups=sum(not any(group["correct"]) for group in equal),
                    all_right_groups=sum(all(group["correct"]) for group in equal))
        self._count(groups=len(groups), all_equal_groups=len(equal),
                    sampling_s=time.perf_counter() - started)
        return groups

    def reward(self, prompt: list[int], completion: list[int], finished: bool) -> tuple[float, bool]:
        """(the verifier's 1 or 0 plus the optional shaping terms, whether the answer is right); an unfinished sample is
        not graded."""
        config = self.config
        row = self.rows_by_prompt[tuple(prompt)]
        verdict = None
        if finished:
            example = Example(id=row["example_id"], question=row.get("question", ""), answer=row["answer"],
                              choices=row.get("choices"))
            verdict = self.task.grade(example, completion_text(self.tokenizer, completion))
        correct = bool(verdict and verdict.correct)
        reward = float(correct)
        if verdict is not None and verdict.extracted is not None:
            reward += config.grpo_format_reward
        if not finished:
            reward -= config.grpo_overlong_penalty
        reward -= config.grpo_length_penalty * len(completion) / config.grpo_max_tokens
        self._count(samples=1, correct=int(correct), reward=reward, sample_tokens=len(completion), stopped=int(finished))
        return reward, correct

    # -- logging -----------------------------------------------------------------------------------

    def _count(self, **values: float) -> None:
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0) + value
            self.totals[key] = self.totals.get(key, 0) + value

    def log(self) -> dict[str, Any]:
        """What the loop adds to each optimizer step's log line; the window restarts."""
        window, self.window = self.window, {}
        entry: dict[str, Any] = {}
        if window.get("samples"):
            samples = window["samples"]
            entry.update(reward_mean=round(window["reward"] / samples, 4), sample_accuracy=round(window["correct"] / samples, 4),
                         sample_tokens=round(window["sample_tokens"] / samples, 1),
                         sample_stop_rate=round(window["stopped"] / samples, 3),
                         all_equal_share=round(window.get("all_equal_groups", 0) / max(window.get("groups", 0), 1), 3),
                         sampling_s=round(window.get("sampling_s", 0.0), 3))
        entry["groups_updated"] = int(window.get("groups_updated", 0))
        if window.get("all_equal"):
            entry["all_equal"] = True
        if window.get("tokens_updated"):
            tokens = window["tokens_updated"]
            entry.update(entropy=round(window["entropy"] / tokens, 4), clip_fraction=round(window["clipped"] / tokens, 4))
            if "kl" in window:
                entry["kl"] = round(window["kl"] / tokens, 5)
            if window.get("teacher_graded"):
                entry.update(teacher_reverse_kl=round(window["teacher_kl"] / window["teacher_graded"], 5),
                             scoring_s=round(window["scoring_s"], 3))
        return entry

    def summary(self) -> dict[str, Any]:
        totals = self.totals
        samples = int(totals.get("samples", 0))
        return {"grpo_totals": {
            "sampled_batches": self.draws, "samples": samples, "sample_tokens": int(totals.get("sample_tokens", 0)),
            "sample_accuracy": round(totals.get("correct", 0) / samples, 4) if samples else None,
            "groups": int(totals.get("groups", 0)), "all_equal_groups": int(totals.get("all_equal_groups", 0)),
            "refilled_groups": int(totals.get("refilled", 0)), "all_equal_batches": int(totals.get("all_equal", 0)),
            "teacher_tokens": int(totals.get("teacher_graded", 0)),
            "sampling_s": round(totals.get("sampling_s", 0.0), 1), "scoring_s": round(totals.get("scoring_s", 0.0), 1)}}
