"""The local-model runtime that generation, training, evaluation and serving share.

    load       model specs (hub ids, directories, .gguf files, packages that ship weights) to models and tokenizers
    precision  what `dtype: auto` means on this machine (bf16 where a fast path is measured, else fp32)
    engine     continuous batching over token ids: one sampler for generate, eval, on-policy, GRPO and serve
    tokens     chat rendering, tokenizing, collation and output heads that the engine and training share
    score      log-probs (and top-k) of given completions under a local model
    topk       the stored top-k format teachers write and KD reads
    rsd        rejection-sampling decoding: the student drafts, a teacher guards
"""
