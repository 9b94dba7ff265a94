"""Write the generated tables of the README and docs/results.md from benchmarks/results/*.json (never typed by hand).

    python benchmarks/report.py          # rewrites the blocks between <!-- NAME:start --> and <!-- NAME:end -->

README.md holds the default run's table; docs/results.md the benchmark table, the mentor-fast and real-teacher runs and
the answer-line wording table.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
RUN_START, RUN_END = "<!-- default-run:start -->", "<!-- default-run:end -->"
REAL_START, REAL_END = "<!-- real-teacher:start -->", "<!-- real-teacher:end -->"
MENTOR_START, MENTOR_END = "<!-- mentor-fast:start -->", "<!-- mentor-fast:end -->"
WORDING_START, WORDING_END = "<!-- wording:start -->", "<!-- wording:end -->"
RACE_SECTIONS = {"arith": "method-race-the-fast-testbed", "gsm8k": "method-race-on-gsm8k-testbed-b"}
NOISE_START, NOISE_END = "<!-- gradient-noise:start -->", "<!-- gradient-noise:end -->"


def rows() -> list[str]:
    lines = ["| benchmark | machine | date | tutorlm | peer | ratio | notes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        name = result["benchmark"]
        if name == "generate_http":
            lines.append(
                f"| generate over HTTP ({result['server']}, {result['requests']} requests, concurrency {result['concurrency']}) "
                f"| {result['machine']} | {result['date']} | {result['tutorlm_completions_per_s']} completions/s "
                f"| bare asyncio client: {result['bare_client_completions_per_s']} completions/s | {result['ratio']}× "
                f"| rerun made {result['rerun_teacher_calls']} teacher calls |"
            )
        elif name == "default_recipe":
            stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in result["stage_seconds"].items())
            lines.append(
                f"| `tutorlm run` ({result['recipe']} recipe) | {result['machine']}{', ' + result['isa'] if 'isa' in result else ''} "
                f"| {result['date']} | {result['wall_s'] / 60:.1f} min wall, "
                f"student {result['accuracy']['base']:.0%} -> {result['accuracy']['student']:.0%} | – | – | {stages} |"
            )
        elif name == "distill_methods" and "runs" in result:  # --compare: finished runs side by side
            runs = result["runs"]
            names = list(runs)
            baseline = next((n for n in names if runs[n]["objective"] == "sft"), names[0])

            def described(n: str) -> str:
                run = runs[n]
                low, high = run["accuracy_ci95"]
                work = (f"; teacher scored {run['teacher_tokens_scored']:,} tokens" if run["teacher_tokens_scored"] else "") + \
                    (f", wrote {run['teacher_tokens_written']:,}" if run["teacher_tokens_written"] else "")
                return (f"{n} ({run['objective']}, from {run['started_from']}, {run['steps']} steps): {run['accuracy']:.0%} "
                        f"({low:.0%}–{high:.0%}), train {run['train_seconds']:.0f} s{work}")
            others = [n for n in names if n != baseline]
            best = max(others, key=lambda n: runs[n]["accuracy"]) if others else baseline
            lines.append(
                f"| distillation methods, {runs[baseline]['questions']} test questions, {runs[best]['max_tokens']} max tokens "
                f"| {result['machine']} | {result['date']} | {'; '.join(described(n) for n in others)} | {described(baseline)} "
                f"| best {(runs[best]['accuracy'] - runs[baseline]['accuracy']) * 100:+.0f} points | teacher "
                f"{runs[best]['teacher']} |"
            )
        elif name == "kd_vs_trl":
            sides = result["sides"]
            ours, best = sides["tutorlm"], sides[result["best_trl"]]
            memory = result["memory_measure"]
            other = [f"{side}: {values['step_s_median']} s, {values[memory]:,} MB" for side, values in sides.items()
                     if side not in ("tutorlm", result["best_trl"])]
            lines.append(
                f"| on-policy distillation step, student {result['student']}, teacher {result['teacher']} ({result['dtype']}, "
                f"batch {result['batch_size']}, {result['max_new_tokens']} sampled tokens, JSD beta {result['beta']}) "
                f"| {result['machine']} | {result['date']} | {ours['step_s_median']} s per step, {ours[memory]:,} MB "
                f"(sampling {ours['sampling_share']:.0%} of the step) | TRL {result['trl_version']} {result['best_trl']}: "
                f"{best['step_s_median']} s, {best[memory]:,} MB | {result['speedup_vs_best_trl']}× (memory "
                f"{result['memory_ratio_vs_best_trl']}×) | {'; '.join(other)}" + (f"; code: {result['code']}" if "code" in result else "") + " |"
            )
        elif name == "distill_methods":
            sides = result["sides"]

            def acc(label: str) -> str:
                low, high = sides[label]["accuracy_ci95"]
                return f"{sides[label]['accuracy']:.0%} ({low:.0%}–{high:.0%})"
            teacher = result.get("kd_teacher") or result.get("teacher")
            kd_stats = result.get("kd_stats") or {}
            path = f", {kd_stats['path']}, {kd_stats['aligned_token_share']:.0%} of tokens aligned" if "aligned_token_share" in kd_stats else ""
            lines.append(
                f"| distillation methods, {result['task']['source']} ({result['train_examples']} rationales"
                f"{' from ' + result['rationales_from'] if result.get('rationales_from') else ''}, "
                f"{result['questions']} test questions), KD teacher {teacher} | {result['machine']} | {result['date']} "
                f"| logit KD ({result['kd_settings']['kd_divergence']}, CE weight {result['kd_settings']['kd_ce_weight']}{path}): "
                f"{acc('kd')}, train stage {sides['kd']['train_seconds']:.0f} s | SFT: {acc('sft')}, train {sides['sft']['train_seconds']:.0f} s "
                f"| {(sides['kd']['accuracy'] - sides['sft']['accuracy']) * 100:+.0f} points | base {acc('base')}"
                f"{', teacher ' + acc('teacher') if 'teacher' in sides else ''} |"
            )
        elif name == "precision":
            train_shape = next(iter(result["shapes"].values()))
            sft = result.get("sft", {})
            outcome = (f"SFT bf16 autocast {sft['bf16_autocast']['real_tokens_per_s']} vs fp32 {sft['fp32']['real_tokens_per_s']} "
                       f"real tokens/s ({sft['speedup']}×)" if "speedup" in sft else sft.get("skipped", "SFT not compared"))
            lines.append(
                f"| precision, {result['model']} shapes ({result['cpu']}, {result['threads']} threads) | {result['machine']} "
                f"| {result['date']} | bf16 matmul {train_shape['bf16_gflops']} GFLOP/s (training shape) | fp32: "
                f"{train_shape['fp32_gflops']} GFLOP/s | {train_shape['bf16_over_fp32']}× | auto chooses "
                f"{result['auto_chooses']}; bf16 CPU flags: {', '.join(result['bf16_flags']) or 'none'}; {outcome} |"
            )
        elif name == "packing":
            lines.append(
                f"| SFT batching, {result['model']} (batch {result['batch_size']}, {result['steps']} steps) | {result['machine']} "
                f"| {result['date']} | packed: {result['packed']['real_tokens_per_s']} real tokens/s "
                f"| length-grouped padding: {result['padded']['real_tokens_per_s']} real tokens/s | {result['ratio_packed_over_padded']}× "
                f"| pads computed when padding: {result['padded']['pad_fraction']:.1%} |"
            )
        elif name == "sft_vs_trl" and result["device"] == "cuda":
            sides = result["sides"]
            ours, trl = sides["tutorlm"], sides[result["best_trl"]]
            square = result["gpu_limit"]["square_8192_gflops"] / 1e3
            others = "; ".join(f"{side}: {m['real_tokens_per_s']:,.0f} tokens/s, {m['peak_gpu_mb']:,} MB, MFU {m['mfu_vs_measured_square']:.0%}"
                               for side, m in sides.items() if side not in ("tutorlm", result["best_trl"]))
            lines.append(
                f"| SFT, {result['model']}, {result['dtype']} on {result['device']} (batch {result['batch_size']}, {result['steps']} "
                f"steps) | {result['machine']} | {result['date']} | {ours['real_tokens_per_s']:,.0f} real tokens/s, "
                f"{ours['peak_gpu_mb']:,} MB GPU peak, MFU {ours['mfu_vs_measured_square']:.0%} "
                f"| TRL {result['trl_version']} SFTTrainer ({result['best_trl']}): {trl['real_tokens_per_s']:,.0f} real tokens/s, "
                f"{trl['peak_gpu_mb']:,} MB GPU peak, MFU {trl['mfu_vs_measured_square']:.0%} "
                f"| {result['ratio_tokens_per_s']}× (memory {result['ratio_peak_memory']}×) "
                f"| MFU: useful FLOPs/s over the bf16 8192² matmul measured in the same run ({square:.0f} TFLOP/s; datasheet "
                f"989); with gradient checkpointing on both sides (TRL's default): {result.get('ratio_tokens_per_s_gc', '–')}× speed, "
                f"{result.get('ratio_peak_memory_gc', '–')}× memory; {others}; mean loss of the last 5 steps: tutorlm "
                f"{ours['last_losses_mean']}, TRL {trl['last_losses_mean']}" + (f"; code: {result['code']}" if "code" in result else "") + " |"
            )
        elif name == "sft_vs_trl":
            sides = result["sides"]
            ours, trl = sides["tutorlm"], sides[result["best_trl"]]
            other = "trl-packed" if result["best_trl"] == "trl-padded" else "trl-padded"
            gc = ""
            if "ratio_tokens_per_s_gc" in result:
                gc = (f"; both with gradient checkpointing (TRL's default): tutorlm {sides['tutorlm-gc']['real_tokens_per_s']} "
                      f"tokens/s, {sides['tutorlm-gc']['peak_rss_mb']} MB, TRL {sides['trl-padded-gc']['real_tokens_per_s']} tokens/s, "
                      f"{sides['trl-padded-gc']['peak_rss_mb']} MB ({result['ratio_tokens_per_s_gc']}× speed, "
                      f"{result['ratio_peak_memory_gc']}× memory)")
            lines.append(
                f"| SFT, {result['model']} {result['dtype']} on {result['device']} (batch {result['batch_size']}, {result['steps']} steps) "
                f"| {result['machine']} | {result['date']} | {ours['real_tokens_per_s']} real tokens/s, {ours['peak_rss_mb']} MB peak RSS "
                f"| TRL {result['trl_version']} SFTTrainer ({result['best_trl']}): {trl['real_tokens_per_s']} real tokens/s, "
                f"{trl['peak_rss_mb']} MB peak RSS | {result['ratio_tokens_per_s']}× (memory {result['ratio_peak_memory']}×) "
                f"| no gradient checkpointing on either side; {other}: {sides[other]['real_tokens_per_s']} tokens/s; live-tensor peaks "
                f"(large blocks mmapped): tutorlm {ours['peak_live_mb']} MB, TRL {trl['peak_live_mb']} MB ({result['ratio_peak_live']}×){gc}; "
                f"mean loss of the last 5 steps: tutorlm {ours['last_losses_mean']}, TRL {trl['last_losses_mean']} |"
            )
        elif name == "kd_loss":
            lines += [loss_row(result["full_teacher"]), loss_row(result["topk_teacher"])]
        elif name == "loss_memory":
            lines.append(loss_row(result))
        elif name == "sft_mfu":
            limit = result["limit"]["model_shapes_gflops"]
            variants = ", ".join(f"{v}: {m['gflops']} GFLOP/s ({m['fraction_of_limit']:.0%})" for v, m in result["variants"].items())
            default = result["variants"]["fused_adamw"]  # tutorlm's default optimizer since this measurement
            lines.append(
                f"| SFT model FLOPs utilization, {result['model']} fp32 (batch {result['batch_size']}) | {result['machine']} | {result['date']} "
                f"| {default['gflops']} GFLOP/s (default: fused AdamW) | fp32 matmul at the model's shapes: {limit} GFLOP/s "
                f"| {default['fraction_of_limit']}× "
                f"| {variants}" + (f"; bf16 against the bf16 matmul limit at the same shapes, "
                                   f"{result['limit_bf16']['model_shapes_gflops']} GFLOP/s" if "limit_bf16" in result else "") + " |"
            )
        elif name == "eval_vs_lmeval":
            for run in result["runs"]:
                lines.append(
                    f"| eval, {run['model']} on {run['questions']} {result['task']} questions ({run['max_tokens']} max tokens, "
                    f"batch {run['batch_size']}) | {result['machine']} | {result['date']} | {run['tutorlm_tokens_per_s']} tokens/s, "
                    f"accuracy {run['tutorlm_accuracy']:.0%} | lm-eval {result['lm_eval_version']} hf: "
                    f"{run['lmeval_generate_tokens_per_s']} tokens/s generating, accuracy {run['lmeval_accuracy']:.0%} "
                    f"| {run['ratio_generation']}× | identical generations: {run['identical_generations']} of {run['questions']}; "
                    f"with lm-eval's task set-up and grading: {run['ratio']}×; share of the fp32 matmul limit "
                    f"({run['limit_gflops']} GFLOP/s): tutorlm {run['tutorlm_fraction_of_limit']:.0%}, lm-eval "
                    f"{run['lmeval_fraction_of_limit']:.0%}, so no engine beats lm-eval here by more than {run['ratio_ceiling']}×; "
                    f"each side's best batch size: {result['best_vs_best_generation'][run['model']]}× |"
                )
        elif name == "serve":
            for run in result["served"]:
                lines.append(
                    f"| `tutorlm serve`, {run['clients']} streaming client{'s' if run['clients'] > 1 else ''}, {result['model']} on "
                    f"{result['questions']} {result['task']} questions ({result['max_tokens']} max tokens, {result['slots']} slots) "
                    f"| {result['machine']} | {result['date']} | {run['tokens_per_s']:.1f} tokens/s, latency p50 {run['latency_s']['p50']:.1f} s "
                    f"p90 {run['latency_s']['p90']:.1f} s, first token p50 {run['first_token_s']['p50']:.2f} s "
                    f"| the engine offline, same slots: {result['offline']['tokens_per_s']:.1f} tokens/s | {run['ratio']:.2f}× "
                    f"| {run['identical']} of {result['questions']} answers identical to offline |"
                )
            if result.get("single"):
                single = result["single"]
                ours, theirs = single["served_one_client"], single["offline_one_row"]
                lines.append(
                    f"| `tutorlm serve`, one streaming client against the engine with one row, {result['model']} on "
                    f"{single['questions']} {result['task']} questions ({result['max_tokens']} max tokens) | {result['machine']} "
                    f"| {result['date']} | {ours['tokens_per_s']:.1f} tokens/s, first token p50 {ours['first_token_s']['p50']:.2f} s "
                    f"| the engine offline, one row: {theirs['tokens_per_s']:.1f} tokens/s | {single['ratio']:.2f}× "
                    f"| {single['identical']} of {single['questions']} answers identical |"
                )
        elif name == "kd_speed":
            rates = result["tokens_per_s"]
            lines.append(
                f"| KD from a stored top-{result['top_k']} against SFT, {result['model']} ({result['precision']}, batch "
                f"{result['batch_size']}, {result['labelled_tokens_per_step']} labelled tokens a step) | {result['machine']} "
                f"| {result['date']} | top-k KD {rates['topk_kd']} tokens/s (before, checkpointed: {rates['topk_kd_checkpointed']}) "
                f"| SFT {rates['sft']} tokens/s | {result['topk_kd_over_sft']}× (before {result['checkpointed_topk_kd_over_sft']}×) "
                f"| goal {result['goal']}; fastest of {result['rounds']} interleaved rounds |"
            )
        elif name == "load_memory":
            released, kept = result["sides"]["released"], result["sides"]["kept"]
            lines.append(
                f"| memory after loading {result['model']} ({result['dtype']}) | {result['machine']} | {result['date']} "
                f"| freed memory handed back (models.release_memory): {released['rss_after_load_gb']} GB resident, "
                f"{released['peak_rss_gb']} GB peak | kept: {kept['rss_after_load_gb']} GB resident, {kept['peak_rss_gb']} GB peak "
                f"| {result['resident_ratio']}× less resident memory | weights: {released['parameter_gb']} GB |"
            )
        elif name == "kv_memory":
            for run in result["runs"]:
                before, after = run["preallocated"], run["grown"]
                lines.append(
                    f"| hf backend KV buffer, {result['model']} on {result['questions']} {result['task']} questions (batch "
                    f"{result['batch_size']}, {run['max_tokens']} max tokens) | {result['machine']} | {result['date']} "
                    f"| grown as rows need: {after['kv_peak_mb']:,} MB KV, {after['rss_peak_mb']:,} MB peak RSS, {after['tokens_per_s']} tokens/s "
                    f"| allocated for max_tokens up front: {before['kv_peak_mb']:,} MB KV, {before['rss_peak_mb']:,} MB peak RSS, "
                    f"{before['tokens_per_s']} tokens/s | {run['ratio_kv']}× KV memory | {run['ratio_time']}× the time; "
                    f"identical completions: {run['identical_completions']} |"
                )
        elif name == "learning_curve":
            points = ", ".join(f"{p['questions']} q ({p['curated']} rationales): {p['accuracy']:.0%} "
                               f"({p['accuracy_ci95'][0]:.0%}–{p['accuracy_ci95'][1]:.0%})" for p in result["points"])
            lines.append(f"| learning curve, `{result['recipe']}` recipe retrained on N training questions | {result['machine']} "
                         f"| {result['date']} | {points} | – | – | held-out accuracy of the student; train seconds: "
                         f"{', '.join(str(p['train_s']) for p in result['points'])} |")
        elif name == "levers":
            base = result["baseline"]
            for variant in result["variants"]:
                difference = variant["vs_baseline"]
                lines.append(
                    f"| lever `{variant['name']}` on the `{result['recipe']}` recipe ({' '.join(variant['settings'])}), "
                    f"{difference['questions']} test questions | {result['machine']} | {result['date']} "
                    f"| {accuracy(variant)}, {variant['curated']} rationales, train {variant['train_s']:.0f} s "
                    f"| {result.get('baseline_label', 'the recipe')}: {accuracy(base)}, {base['curated']} rationales, train "
                    f"{base['train_s']:.0f} s | {paired(difference)}; teacher calls "
                    f"{variant['teacher_calls']} |")
        elif name == "student_fit":
            points = {point["name"]: point for point in result["selections"]}
            base = points["correct"]
            for point in (p for p in result["selections"] if p["name"] != "correct"):
                difference = point["vs_correct"]
                lines.append(
                    f"| rationale selection `{point['name']}` on the `{result['recipe']}` recipe ({result['k']} of {result['n']} "
                    f"teacher samples per question at T={result['temperature']}), {difference['questions']} test questions "
                    f"| {result['machine']} | {result['date']} | {accuracy(point)}, {point['curated']} rationales "
                    f"| a random correct one: {accuracy(base)}, {base['curated']} rationales | {paired(difference)} |")
        elif name == "rsd":
            points = {point["name"]: point for point in result["points"]}
            plain, rsd = points["teacher"], points["rsd"]
            difference = rsd["vs_teacher"]
            low, high = difference["difference_ci95"]
            lines.append(
                f"| RSD (floor {result['floor']}) vs the teacher's own rationales, Qwen2.5-Coder-1.5B (int8) -> 0.5B student "
                f"(merged LoRA, {result['epochs']} epoch), {result['limit']} training questions, {difference['questions']} "
                f"test questions | {result['machine']} | {result['date']} | {rsd['accuracy']:.0%} ({rsd['accuracy_ci95'][0]:.0%}–"
                f"{rsd['accuracy_ci95'][1]:.0%}), {rsd['curated']} rationales verified, {rsd['redrawn_share']:.1%} of tokens "
                f"redrawn, generate {rsd['generate_s']:.0f} s | teacher's own: {plain['accuracy']:.0%} "
                f"({plain['accuracy_ci95'][0]:.0%}–{plain['accuracy_ci95'][1]:.0%}), {plain['curated']} verified, generate "
                f"{plain['generate_s']:.0f} s | {difference['difference'] * 100:+.0f} points ({low * 100:+.0f} to "
                f"{high * 100:+.0f}) | base student {result['base_accuracy']:.0%}; mean rationale tokens "
                f"{rsd['mean_rationale_tokens']} vs {plain['mean_rationale_tokens']}; paired bootstrap"
                + (f"; another greedy draw of the teacher's own (int8 texts depend on the batch): "
                   f"{points['teacher, another draw']['accuracy']:.0%}, "
                   f"{points['teacher, another draw']['vs_teacher']['difference'] * 100:+.0f} points vs the first; RSD vs "
                   f"that draw {rsd['vs_another_draw']['difference'] * 100:+.0f} points "
                   f"({rsd['vs_another_draw']['difference_ci95'][0] * 100:+.0f} to "
                   f"{rsd['vs_another_draw']['difference_ci95'][1] * 100:+.0f})"
                   if "teacher, another draw" in points else "") + " |")
        elif name == "cascade":
            strong, cascade = result["sides"]["strong alone"], result["sides"]["cascade"]
            per = "; ".join(f"{teacher}: {one['questions']} questions, {one['questions_solved']} solved, {one['wall_s']:.0f} s"
                            for teacher, one in cascade["teachers"].items())
            lines.append(
                f"| teacher cascade (Qwen2.5-Coder-0.5B, then 1.5B for what it got wrong; int8) vs the 1.5B alone, "
                f"{result['limit']} multistep-arithmetic questions | {result['machine']} | {result['date']} "
                f"| {cascade['solved']} questions with a verified rationale, {cascade['seconds']:.0f} s of teacher time, "
                f"{cascade['completion_tokens']:,} tokens | 1.5B alone: {strong['solved']} solved, {strong['seconds']:.0f} s, "
                f"{strong['completion_tokens']:,} tokens | {cascade['seconds'] / strong['seconds']:.2f}× the time | {per}; "
                f"the 1.5B wrote {cascade['large_token_share']:.0%} of its tokens alone |")
        elif name == "rl_methods":
            for point in result["methods"]:
                difference = point["vs_start"]
                low, high = difference["difference_ci95"]
                extra = (f"{point['rl']['samples']} samples, {point['rl']['sample_accuracy']:.0%} right; "
                         if "rl" in point else f"{point['pairs']} pairs; ")
                lines.append(
                    f"| after distillation: `{point['method']}` recipe from `{point['start']}`, {difference['questions']} test "
                    f"questions | {result['machine']} | {result['date']} | {point['accuracy']:.0%} "
                    f"({point['accuracy_ci95'][0]:.0%}–{point['accuracy_ci95'][1]:.0%}), {point['steps']} steps, "
                    f"{point['method_s']:.0f} s | the start: {point['base_accuracy']:.0%} "
                    f"({point['base_accuracy_ci95'][0]:.0%}–{point['base_accuracy_ci95'][1]:.0%}) "
                    f"| {difference['difference'] * 100:+.0f} points ({low * 100:+.0f} to {high * 100:+.0f}) "
                    f"| {extra}paired bootstrap, not better in {difference['p_not_better']:.0%} of resamples; time is training"
                    f"{' and sampling the pairs' if 'pairs' in point else ''} |")
        elif name == "grpo_vs_trl":
            sides, memory = result["sides"], result["memory_measure"]
            ours, peer = sides.get("tutorlm"), sides.get("trl-grpo")
            if ours and peer:
                lines.append(
                    f"| GRPO step, student {result['student']} ({result['dtype']}, {result['questions']} questions x "
                    f"{result['group_size']} samples, {result['max_new_tokens']} sampled tokens, {result['loss']}) "
                    f"| {result['machine']} | {result['date']} | {ours['step_s_median']} s per step, {ours[memory]:,} MB "
                    f"(sampling {ours['sampling_share']:.0%} of the step) | TRL {result['trl_version']} GRPOTrainer: "
                    f"{peer['step_s_median']} s, {peer[memory]:,} MB | {result['speedup_vs_trl']}× "
                    f"(memory {result['memory_ratio_vs_trl']}×) | median of {result['steps'] - result['warmup_steps']} steps |")
        elif name == "teacher_speed":
            reference_name = result.get("reference", "float32")
            reference = result["results"][reference_name]
            comparisons = result.get("vs_reference") or {  # results written before --dtypes
                "int8": {"speedup": result["int8_speedup"], "identical_completions": result["identical_completions"]}}
            for precision, versus in comparisons.items():
                figures = result["results"][precision]
                lines.append(f"| local teacher decode, {result['model']} ({result['prompts']} multistep-arithmetic prompts, "
                             f"{result['max_tokens']} max tokens, batch {result['batch_size']}) | {result['machine']} | {result['date']} "
                             f"| {precision}: {figures['tokens_per_s']} tokens/s, {figures['peak_rss_mb']:,} MB peak RSS, "
                             f"accuracy {figures['accuracy']:.0%} | {reference_name}: {reference['tokens_per_s']} tokens/s, "
                             f"{reference['peak_rss_mb']:,} MB, accuracy {reference['accuracy']:.0%} | {versus['speedup']}× "
                             f"| load {figures['load_s']} s vs {reference['load_s']} s; identical completions: "
                             f"{versus['identical_completions']:.0%} |")
        elif name == "method_race":
            for testbed, race in result["testbeds"].items():
                sft = next((arm for arm in race["arms"] if arm["arm"] == "sft"), None)
                others = [arm for arm in race["arms"] if "vs_sft" in arm and arm["settings"]["objective"] != "sft"]
                if sft is None or not others:
                    continue
                best = max(others, key=lambda arm: arm["vs_sft"]["difference"])
                sft = next(arm for arm in race["arms"] if arm["arm"] == best.get("vs_sft_arm", "sft"))
                lines.append(
                    f"| [method race](results.md#{RACE_SECTIONS.get(testbed, 'method-race-the-fast-testbed')}) `{testbed}` ({race['task']}, {race['minutes']:g} min an arm) "
                    f"| {race['machine']} | {race['date']} | best other arm, {best['arm']}: {accuracy(best['final'])} "
                    f"| SFT arm{'' if sft['arm'] == 'sft' else ' ' + sft['arm']}: {accuracy(sft['final'])} | {paired(best['vs_sft'])} |"
                )
        elif name == "gradient_noise":
            cells = "; ".join(f"{arm['arm']} {arm['noise_scale_sequences']} sequences (cosine {arm['cosine']})"
                              for arm in result["arms"])
            lines.append(f"| gradient noise scale at the method race's start ({result['race']}) | {result['machine']} | "
                         f"{result['date']} | {cells} | – | – | 8 independent micro-batches of each arm's size |")
        elif name == "token_alignment":
            cells = "; ".join(f"{task}: {shares['aligned_token_share']:.0%} of tokens, {shares['aligned_digit_token_share']:.0%} "
                              f"of digit tokens, {shares['aligned_line_end_token_share']:.0%} of line ends"
                              for task, shares in result["tasks"].items())
            lines.append(f"| token alignment, {result['student']} under {result['teacher']} | {result['machine']} | {result['date']} "
                         f"| {cells} | – | – | exact character spans (train/align.py) |")
        elif name == "generate_hf":
            for prompt_set, label in (("task", "task prompts, short answers"), ("long", "open-ended prompts, decode-bound")):
                part = result[prompt_set]
                lines.append(
                    f"| hf backend, {result['model']} {result['dtype']} on {result['device']} ({label}, {result['prompts']} prompts, "
                    f"{result['max_tokens']} max tokens) | {result['machine']} | {result['date']} "
                    f"| {part['hf_backend_tokens_per_s']} tokens/s | one-at-a-time `generate`: {part['plain_loop_tokens_per_s']} tokens/s "
                    f"| {part['ratio']}× | batch {result['batch_size']} |"
                )
    return lines


def accuracy(point: dict) -> str:
    """'25% (18%–34%)': an accuracy and its 95% interval."""
    low, high = point["accuracy_ci95"]
    return f"{point['accuracy']:.0%} ({low:.0%}–{high:.0%})"


def paired(difference: dict) -> str:
    """The ratio and notes cells of a paired comparison: the difference in points, its interval, and how often a
    resample found the change not better."""
    low, high = difference["difference_ci95"]
    return (f"{difference['difference'] * 100:+.0f} points ({low * 100:+.0f} to {high * 100:+.0f}) | paired bootstrap; "
            f"not better in {difference['p_not_better']:.0%} of resamples")


def loss_row(result: dict) -> str:
    """A row for one loss_memory.py result: the SFT loss, the KD loss, or the KD loss against a top-k."""
    plain, fused = result["variants"]["plain"], result["variants"]["fused"]
    what = {"kd": ("KD loss alone (forward KL)", "chunked KD from hidden states", "both models' full logits + KL"),
            "kd-topk": ("KD loss against a stored top-20", "chunked top-k KD", "the student's full logits + top-k KL"),
            }.get(result.get("loss"), ("SFT loss alone", "chunked linear cross-entropy", "full logits + cross-entropy"))
    return (f"| {what[0]}, {result['tokens']} labelled tokens x vocabulary {result['vocab']:,} x hidden {result['hidden']} "
            f"({result['dtype']}, {result['device']}) | {result['machine']} | {result['date']} | {what[1]}: "
            f"{fused['peak_above_inputs_mb']} MB peak, {fused['ms']} ms | {what[2]}: "
            f"{plain['peak_above_inputs_mb']} MB peak, {plain['ms']} ms | {result['ratio_memory']}× memory "
            f"| {result['ratio_time']}× the time; loss and both gradients agree: {all(result['loss_and_gradients_agree'].values())} |")


def default_run(name: str = "default_recipe.json") -> list[str]:
    """A recipe's result table (the quickstart's, the real teacher's), from benchmarks/results/NAME."""
    path = ROOT / "benchmarks" / "results" / name
    if not path.exists():
        return [f"(run `python benchmarks/default_recipe.py` to measure: results/{name})"]
    result = json.loads(path.read_text())
    budget = result.get("max_tokens")
    lines = [f"Measured on {result['date']} ({result['machine']}): {result['wall_s'] / 60:.1f} minutes from an empty run directory.", "",
             "| model | accuracy on {} held-out questions | 95% CI | answers cut off{} |".format(
                 result["questions"], f" at {budget} tokens" if budget else ""),
             "| --- | --- | --- | --- |"]
    truncation = result.get("truncation_rate", {})
    for label, value in result["accuracy"].items():
        low, high = result["accuracy_ci95"][label]
        cut = f"{truncation[label]:.0%}" if label in truncation else "–"
        lines.append(f"| {label} | {value:.0%} | {low:.0%}–{high:.0%} | {cut} |")
    generous = result.get("base_generous_budget")
    if generous:
        low, high = generous["accuracy_ci95"]
        lines.append(f"| base, {generous['max_tokens']} tokens | {generous['accuracy']:.0%} | {low:.0%}–{high:.0%} "
                     f"| {generous['truncation_rate']:.0%} |")
    stages = result.get("stage_seconds") or {}
    if stages:
        lines += ["", "Stages: " + ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in stages.items()
                                         if seconds >= 6) + "."]
    paired = result.get("paired")
    if paired and paired.get("recovered") is not None and paired.get("recovered_ci95"):
        low, high = paired["recovered_ci95"]
        ratio = ""
        if paired.get("student_over_teacher") is not None and paired.get("student_over_teacher_ci95"):
            r_low, r_high = paired["student_over_teacher_ci95"]
            ratio = f" and reached **{paired['student_over_teacher']:.2f} ({r_low:.2f}–{r_high:.2f})** of its accuracy"
        lines += ["", f"The student recovered **{paired['recovered']:.0%} ({low:.0%}–{high:.0%})** of the teacher's lead over "
                      f"the base{ratio} (95% paired bootstrap over {paired['questions']} questions)."]
    return lines


def wording_table() -> list[str]:
    """benchmarks/results/prompt_wording.json as a table: one row per task and wording."""
    path = ROOT / "benchmarks" / "results" / "prompt_wording.json"
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    lines = ["| task | instruction ends | base accuracy (95% CI) | literal placeholder | no answer | truncated |",
             "| --- | --- | --- | --- | --- | --- |"]
    for point in result["points"]:
        ending = point["instruction"].split("step by step", 1)[1].strip(" ,.")
        lines.append(f"| {point['task']} | …{ending} | {point['accuracy']:.0%} ({point['accuracy_ci95'][0]:.0%}–"
                     f"{point['accuracy_ci95'][1]:.0%}) | {point['placeholder_rate']:.0%} | {point['no_answer_rate']:.0%} "
                     f"| {point['truncation_rate']:.0%} |")
    lines += ["", f"({result['model']}, {result['limit']} test questions per task, greedy, {result['max_tokens']} tokens; "
                  f"{result['machine']}, {result['date']}.)"]
    return lines


def race_table(testbed: str) -> list[str]:
    """One method race testbed (method_race.py): per arm its steps, accuracy at each snapshot and at the end, the
    paired difference against the SFT arm on the same questions, and the teacher tokens it used."""
    path = ROOT / "benchmarks" / "results" / "method_race.json"
    if not path.exists() or testbed not in json.loads(path.read_text())["testbeds"]:
        return [f"(no `{testbed}` testbed in benchmarks/results/method_race.json yet)"]
    result = json.loads(path.read_text())["testbeds"][testbed]
    lines = [f"{result['task']}, teacher {result['teacher']}, start {accuracy(result['start_accuracy'])} on "
             f"{result['start_accuracy']['questions']} test questions; {result['minutes']:g} minutes an arm on "
             f"`{result['machine']}` ({result['date']}; each arm's commit in the table).", "",
             "| arm | optimizer steps | accuracy at the snapshots (minute: accuracy) | final accuracy (95% CI) | "
             "against SFT (paired) | against the start (paired) | teacher tokens | commit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def against(difference: dict | None) -> str:
        if difference is None:
            return "–"
        low, high = difference["difference_ci95"]
        return (f"{difference['difference'] * 100:+.1f} points ({low * 100:+.1f} to {high * 100:+.1f}), "
                f"p = {difference['p_not_better']:.2f}")

    for arm in result["arms"]:
        curve = ", ".join(f"{point['minutes']:.1f}: {point['accuracy']:.0%}" for point in arm["points"][:-1])
        versus_sft = against(arm.get("vs_sft"))
        if arm.get("vs_sft_arm", "sft") != "sft":  # a remedy is measured against SFT at its own learning rate
            versus_sft = f"{versus_sft} (vs {arm['vs_sft_arm']})"
        lines.append(f"| {arm['arm']} | {arm['steps']} | {curve or '–'} | {accuracy(arm['final'])} | {versus_sft} | "
                     f"{against(arm.get('vs_start'))} | {arm['teacher_tokens']:,} | {arm.get('commit', result['commit'])} |")
    return lines


def noise_table() -> list[str]:
    """benchmarks/gradient_noise.py: per arm, how consistent one step's gradient is at the race's start."""
    path = ROOT / "benchmarks" / "results" / "gradient_noise.json"
    if not path.exists():
        return ["(no benchmarks/results/gradient_noise.json yet)"]
    result = json.loads(path.read_text())
    lines = [f"At `{result['start']}` on `{result['machine']}` (commit {result['commit']}, {result['date']}):", "",
             "| arm | sequences a step | cosine of two steps' gradients | noise scale B_simple (sequences) | "
             "steps to average it | seconds a step's gradient |", "| --- | --- | --- | --- | --- | --- |"]
    for arm in result["arms"]:
        scale = arm["noise_scale_sequences"] if arm["noise_scale_sequences"] is not None else "above any batch (|G|² ≤ 0)"
        lines.append(f"| {arm['arm']} | {arm['batch_sequences']} | {arm['cosine']} | {scale} | "
                     f"{arm['steps_for_one_signal'] if arm['steps_for_one_signal'] is not None else '–'} | {arm['seconds_per_batch']} |")
    return lines


def replace_block(text: str, start: str, end: str, lines: list[str]) -> str:
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return before + start + "\n" + "\n".join(lines) + "\n" + end + after


def main() -> None:
    blocks = {  # file -> [(start, end, lines)]
        ROOT / "README.md": [(RUN_START, RUN_END, default_run())],
        ROOT / "docs" / "results.md": [(START, END, rows()), (REAL_START, REAL_END, default_run("real_teacher.json")),
                                       (MENTOR_START, MENTOR_END, default_run("mentor_fast.json")),
                                       (WORDING_START, WORDING_END, wording_table()),
                                       (NOISE_START, NOISE_END, noise_table())],
    }
    races = ROOT / "benchmarks" / "results" / "method_race.json"
    results_md = (ROOT / "docs" / "results.md").read_text()
    for testbed in json.loads(races.read_text())["testbeds"] if races.exists() else []:  # each testbed with its markers
        start, end = f"<!-- race-{testbed}:start -->", f"<!-- race-{testbed}:end -->"
        if start in results_md:
            blocks[ROOT / "docs" / "results.md"].append((start, end, race_table(testbed)))
    for path, replacements in blocks.items():
        text = path.read_text()
        for start, end, lines in replacements:
            text = replace_block(text, start, end, lines)
        path.write_text(text)
    print("\n".join(rows() + [""] + default_run() + [""] + default_run("real_teacher.json")))


if __name__ == "__main__":
    main()
