"""The train stage's settings (`train:` in a recipe, `--train.FIELD` on the command line); tutorlm/config.py holds the
other stages' and the recipe that gathers them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tutorlm.options import option


@dataclass
class TrainConfig:
    """Supervised fine-tuning of the student on curated rationales (Fine-tune-CoT; Ho et al. 2023)."""

    objective: Literal["sft", "kd", "on_policy", "grpo", "dpo"] = option(
        "sft", "sft: cross-entropy on the teacher's rationales (Fine-tune-CoT); kd: match the teacher's next-token "
        "distributions on them (Hinton et al. 2015), from a stored top-k or a local teacher (see kd_source); on_policy: "
        "the student samples and the teacher grades every token it wrote (GKD, MiniLLM; a local teacher, kd_teacher, "
        "or the recipe's openai teacher on a server that echoes prompt log-probabilities; see on_policy_*); grpo: "
        "reinforcement learning from the verifier on the curated questions (GRPO, Shao et al. 2024; see grpo_*), with "
        "an optional teacher term (KDRL, grpo_teacher_weight); dpo: preference pairs from `curate --curate.pairs K` "
        "(DPO, Rafailov et al. 2023; see dpo_*)")
    dpo_beta: float = option(0.1, "dpo: beta, how far the student may move from the reference (the starting student)")
    dpo_loss: Literal["sigmoid", "ipo"] = option(
        "sigmoid", "dpo: sigmoid = DPO's -log sigmoid(beta h) on summed log-probs; ipo = IPO's (h - 1/(2 beta))^2 on "
        "log-probs averaged over tokens (robust when pairs are easy to tell apart)")
    grpo_group_size: int = option(8, "grpo: samples per question (G); advantages are relative to the group")
    grpo_max_tokens: int = option(256, "grpo: the longest completion the student samples")
    grpo_temperature: float = option(1.0, "grpo: the student's sampling temperature")
    grpo_scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "grpo: divide advantages by the group's reward std (GRPO), the batch's, or not at all (Dr. GRPO)")
    grpo_loss_aggregation: Literal["token", "sequence"] = option(
        "token", "grpo: token = mean over every sampled token of the batch (DAPO); sequence = mean over each sample's "
        "tokens, then over samples (the original GRPO: long samples weigh less per token)")
    grpo_epsilon_low: float = option(0.2, "grpo: the ratio is clipped below at 1 - epsilon_low")
    grpo_epsilon_high: float = option(0.2, "grpo: the ratio is clipped above at 1 + epsilon_high (DAPO's clip-higher: 0.28)")
    grpo_iterations: int = option(1, "grpo: optimizer steps on each sampled batch (mu); > 1 uses importance ratios and "
                                      "clipping, and needs grad_accum 1")
    grpo_beta: float = option(0.0, "grpo: weight of the KL to the reference model (the starting student; k3 estimator); "
                                    "0 keeps no reference model in memory")
    grpo_skip_equal: bool = option(True, "grpo: leave out of the update the groups whose rewards are all equal (their "
                                          "advantages are 0: they only cost compute); not with grpo_teacher_weight, whose grades teach every group")
    grpo_refill: int = option(0, "grpo: rounds of extra questions (drawn from the curated questions) sampled to replace "
                                  "left-out groups (DAPO's dynamic sampling)")
    grpo_format_reward: float = option(0.0, "grpo: reward added when the completion states a final answer (right or wrong)")
    grpo_overlong_penalty: float = option(0.0, "grpo: reward subtracted when the completion hits grpo_max_tokens unfinished")
    grpo_length_penalty: float = option(0.0, "grpo: reward subtracted per completion token / grpo_max_tokens")
    grpo_teacher_weight: float = option(
        0.0, "grpo: weight of the teacher term (KDRL): a reverse KL of the student's samples to the teacher, graded by "
        "the teacher as on_policy's sampled loss does (train.kd_teacher or the recipe's hf/openai teacher)")
    on_policy_loss: Literal["sampled", "divergence"] = option(
        "sampled", "on_policy: sampled = reverse KL on the sampled tokens, each token's advantage -(log p_student - "
        "log p_teacher) in a policy-gradient loss (MiniLLM, Thinking Machines; needs only the teacher's log-prob of each "
        "sampled token); divergence = kd_divergence (e.g. jsd with kd_beta: GKD) against the teacher's full "
        "distribution (a local teacher with the student's vocabulary) or its top kd_top_k")
    on_policy_targets: Literal["auto", "full", "top_k"] = option(
        "auto", "on_policy divergence: what the student is compared with on its samples: full = the teacher's whole "
        "distribution, computed in the step (a local teacher with the student's vocabulary); top_k = its top kd_top_k "
        "plus a tail bucket, graded once and cached (a server's or another vocabulary's only form); auto = full where "
        "it can be", keyed_when_set=True)
    on_policy_reward_weight: float = option(
        0.0, "on_policy: add w * (reward - the micro-batch's mean reward) to every sampled token's advantage, reward 1 "
        "when the sample's answer verifies against the gold answer (the verifier as a reward, as KDRL); sampled loss only")
    on_policy_lambda: float = option(1.0, "on_policy: share of micro-batches on the student's own samples (GKD's lambda); "
                                          "the rest use the curated rationales (offline KD)")
    on_policy_max_tokens: int = option(128, "on_policy: the longest completion the student samples")
    on_policy_temperature: float = option(1.0, "on_policy: the student's sampling temperature")
    on_policy_samples: int = option(
        4, "on_policy: completions the student samples for each question of a micro-batch (Thinking Machines' group "
        "size); the reward term is centred over a question's samples when there are several")
    kd_source: Literal["auto", "stored", "teacher"] = option(
        "auto", "kd: stored = the top-k that `generate --generate.top_logprobs K` wrote; teacher = a local teacher "
        "(teacher.backend hf) re-scores the rationales; auto = stored when the traces have it")
    kd_teacher: str | None = option(
        None, "kd: the model whose distributions the student learns (a directory, .gguf file or hub id), when it is not "
        "the teacher that wrote the rationales (e.g. rationales from the reference solver or a server, distributions "
        "from a local model); default: the recipe's teacher (teacher.backend hf)")
    kd_teacher_dtype: str = option(
        "auto", "kd, on_policy, grpo's teacher term: the dtype train.kd_teacher runs in (as teacher.dtype: int8 is 3-4x "
        "faster than fp32 on an AVX2 CPU)")
    kd_top_k: int = option(20, "kd: candidates kept per token when a teacher with another vocabulary re-scores the "
                                 "rationales; on_policy: the top-k a teacher known only by its top-k gives")
    kd_teacher_tokenizer: str | None = option(
        None, "on_policy with a teacher on a server: the tokenizer whose chat template renders its prompts (a directory, "
        ".gguf file, package or hub id); default: the student's")
    kd_divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"] = option(
        "forward_kl", "kd: forward KL (Hinton), reverse KL (MiniLLM), generalized JSD(beta) (GKD), or skew KL (DistiLLM)")
    kd_beta: float = option(0.5, "kd: GKD's beta for jsd, DistiLLM's skew alpha for skew_kl and skew_reverse_kl")
    kd_temperature: float = option(1.0, "kd: softmax temperature of both models; the loss is scaled by T^2")
    kd_ce_weight: float = option(0.0, "kd: loss = (1 - w) * divergence + w * cross-entropy on the rationale's tokens")
    method: Literal["full", "lora"] = option("full", "full fine-tuning, or LoRA adapters (Hu et al. 2021) through peft")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA path")
    lora_target_modules: str | list[str] = option("all-linear", "modules that get adapters: 'all-linear' or a list of names")
    merge: bool = option(False, "LoRA: save merged full weights instead of the adapter")
    epochs: int = option(1, "passes over the curated data")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)")
    max_minutes: float | None = option(None, "stop after this many minutes, counted from the start of the train stage "
                                              "(loading and the objective's preparation included); the learning-rate "
                                              "schedule then runs over the minutes instead of the steps: methods compared "
                                              "at equal CPU time (epochs and max_steps still bound it)")
    snapshot_minutes: float | None = option(None, "save the student's weights every this many minutes to "
                                                  "student/snapshots/minute-M (a learning curve against time)")
    lr: float | None = option(None, "peak learning rate (default: 5e-5 full, 2e-4 LoRA; grpo a tenth of that)")
    batch_size: int = option(8, "examples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.05, "fraction of steps with linear warmup; cosine decay to 0 after")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping")
    max_length: int = option(1024, "tokens per example (prompt + completion)")
    overlength: Literal["truncate", "drop"] = option("truncate", "examples longer than max_length: truncate the completion, or drop")
    packing: bool = option(
        False, "padding-free packing of each batch into one row (no cross-example attention); else length-grouped padding. "
        "Packing pays with varlen flash-attention on GPUs; on CPU/SDPA its block-diagonal mask costs more than the "
        "padding it saves (benchmarks/packing.py measured 0.66x)",
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, ~30% more compute")
    compile: bool = option(
        False, "torch.compile the forward pass: 0.94 of matmul peak instead of 0.81 on a 2-core CPU (benchmarks/sft_mfu.py), "
        "but compiling took minutes there, so it pays on long runs only; on GPUs it recompiles per batch shape",
    )
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "auto: bf16 autocast (fp32 master weights and optimizer) where the hardware has a fast bf16 path: CUDA with "
        "bf16, or a CPU measured to run bf16 matmuls faster than fp32 (see `tutorlm doctor`); else fp32")
    eval_fraction: float = option(0.05, "share of curated questions held out for eval loss (by question, never split)")
    max_eval_examples: int = option(64, "cap on held-out examples")
    eval_every: int = option(50, "optimizer steps between held-out evaluations (and one at the end)")
    save_every: int = option(50, "optimizer steps between checkpoints (resume with --resume)")
    keep_checkpoints: int = option(2, "checkpoints kept on disk while training runs (--resume continues from the last)")
    prune_checkpoints: bool = option(True, "when training finishes, delete its checkpoints (weights and optimizer state: a finished "
                                           "run resumes from none of them); false keeps the last keep_checkpoints")
    log_every: int = option(1, "optimizer steps between log lines in train_log.jsonl")
    seed: int = option(0, "seed of data order and initialization of adapters")
    curriculum: Literal["none", "easy_first"] = option(
        "none", "easy_first: the first epoch runs from easy to hard (questions the teacher solved in more of its samples "
        "first, then shorter rationales first); later epochs are shuffled. none: every epoch shuffled")

    @property
    def learns_from_teacher(self) -> bool:
        """The objective scores with a teacher in training (KD, on-policy, GRPO with KDRL's teacher term): the teacher is
        then part of what the student is, and a run keeps it loaded from generation to training."""
        return self.objective in ("kd", "on_policy") or (self.objective == "grpo" and bool(self.grpo_teacher_weight))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "eval_every", "save_every", "keep_checkpoints", "log_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_minutes", "snapshot_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0 when set, got {getattr(self, name)}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        bounds = {  # each setting with its bound, so an error names the key and the value it got
            "kd_beta": (0 <= self.kd_beta <= 1, "in [0, 1]"), "kd_ce_weight": (0 <= self.kd_ce_weight <= 1, "in [0, 1]"),
            "kd_temperature": (self.kd_temperature > 0, "positive"), "kd_top_k": (self.kd_top_k >= 1, "at least 1"),
            "on_policy_lambda": (0 <= self.on_policy_lambda <= 1, "in [0, 1]"),
            "on_policy_max_tokens": (self.on_policy_max_tokens >= 1, "at least 1"),
            "on_policy_temperature": (self.on_policy_temperature >= 0, ">= 0"),
            "grpo_max_tokens": (self.grpo_max_tokens >= 1, "at least 1"), "grpo_temperature": (self.grpo_temperature > 0, "positive"),
            "grpo_iterations": (self.grpo_iterations >= 1, "at least 1"), "grpo_refill": (self.grpo_refill >= 0, ">= 0"),
            "grpo_epsilon_low": (0 <= self.grpo_epsilon_low < 1, "in [0, 1)"), "grpo_epsilon_high": (self.grpo_epsilon_high >= 0, ">= 0"),
            **{name: (getattr(self, name) >= 0, ">= 0") for name in (
                "grpo_beta", "grpo_teacher_weight", "grpo_format_reward", "grpo_overlong_penalty", "grpo_length_penalty")},
        }
        for name, (within, bound) in bounds.items():
            if not within:
                raise ValueError(f"{name} must be {bound}, got {getattr(self, name)!r}")
        if self.on_policy_samples < 1:
            raise ValueError(f"on_policy_samples must be at least 1, got {self.on_policy_samples}")
        if self.on_policy_reward_weight < 0:
            raise ValueError(f"on_policy_reward_weight must be >= 0, got {self.on_policy_reward_weight}")
        dtypes = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "int8")
        if self.kd_teacher_dtype not in dtypes:
            raise ValueError(f"kd_teacher_dtype must be one of {', '.join(dtypes)}, got {self.kd_teacher_dtype!r}")
        if self.on_policy_reward_weight and self.on_policy_loss != "sampled":
            raise ValueError("on_policy_reward_weight adds to the sampled loss's advantages; set on_policy_loss sampled")
        if self.dpo_beta <= 0:
            raise ValueError(f"dpo_beta must be positive, got {self.dpo_beta}")
        if self.grpo_group_size < 2:
            raise ValueError(f"grpo_group_size must be at least 2 (advantages are relative to the group), got {self.grpo_group_size}")
        if self.objective == "grpo" and self.grpo_iterations > 1 and self.grad_accum != 1:
            raise ValueError("grpo_iterations > 1 reuses one sampled micro-batch for several optimizer steps: set grad_accum 1")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.objective == "grpo":  # a sparse, noisy signal: a tenth of SFT's (TRL's GRPO default is 1e-6 at 1.5B+)
            return 5e-5 if self.method == "lora" else 5e-6
        return 2e-4 if self.method == "lora" else 5e-5
