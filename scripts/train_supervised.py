#!/usr/bin/env python3
"""Train a memory core on an NTM-paper algorithmic task and measure length generalisation.

Examples::

    # NTM on copy, trained on lengths 1..20, tested at 20/40/80/120
    python3 scripts/train_supervised.py --core ntm --task copy --seed 0 \
        --core-arg hidden_size=100 --core-arg num_slots=128 --core-arg slot_size=20 \
        --out docs/results/copy_ntm_s0.json --trace

    # LSTM baseline
    python3 scripts/train_supervised.py --core lstm --task copy --core-arg hidden_size=256 --seed 0

    # rl_access with a subset of access processes; the hand-written Copy access sequence as its choices
    python3 scripts/train_supervised.py --core rl_access --task copy --task-arg max_length=10 \
        --core-kwargs '{"processes": ["no_op", "write_least_used", "write_move_right", "read_move_right"]}' \
        --choices oracle --seed 0

The result (config, learning curve, bit errors per size, optional read/write weightings over one sequence) is
written as JSON to ``--out``; ``scripts/plot_supervised.py`` draws the figures from those files.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agents.supervised import (  # noqa: E402
    SequenceModel,
    TrainConfig,
    CHOICE_MODES,
    choice_usage,
    count_parameters,
    evaluate,
    oracle_agreement,
    peak_initial_weightings,
    slots_stay_identical,
    record_weightings,
    train,
)
from envs.sequence_data import TASKS, make_task  # noqa: E402
from memory_cores import CORES, make_core  # noqa: E402
from memory_cores.rl_access import has_discrete_choices  # noqa: E402

DEFAULT_EVAL_SIZES = {"copy": [20, 40, 80, 120], "repeat_copy": [10, 15, 20], "associative_recall": [6, 12, 15]}


def parse_kv(items: list[str], option: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as Python literals when possible)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"{option} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--core", default="lstm", help=f"core name, one of: {', '.join(sorted(CORES))}")
    p.add_argument("--core-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor keyword of the core (repeatable), e.g. hidden_size=100 num_slots=128; values "
                        "are Python literals, e.g. \"processes=['no_op', 'read_move_right']\"")
    p.add_argument("--core-kwargs", default="{}", metavar="JSON",
                   help="constructor keywords of the core as a JSON object (as scripts/train.py takes them), e.g. "
                        "'{\"processes\": [\"no_op\", \"write_least_used\", \"read_move_right\"]}'; --core-arg "
                        "entries override its keys")
    p.add_argument("--task", default="copy", choices=sorted(TASKS), help="algorithmic task")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task option (repeatable), e.g. max_length=20 num_bits=8 (copy), max_items=6 "
                        "(associative_recall), max_repeats=10 (repeat_copy)")
    p.add_argument("--label", default="",
                   help="name of this configuration in results and plots (default: the core name)")
    p.add_argument("--peak-initial-weightings", action="store_true",
                   help="start the core's learned initial head weightings (parameters named *weights_init*) peaked "
                        "on slot 0 instead of uniform: with a constant initial memory and uniform initial weightings "
                        "every slot stays identical forever and the memory cannot be addressed (see "
                        "agents.supervised.peak_initial_weightings)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and of the training data")
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per optimiser step")
    p.add_argument("--max-sequences", type=int, default=200_000, help="stop after this many training sequences")
    p.add_argument("--max-minutes", type=float, default=60.0, help="stop after this much training wall time")
    p.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop"],
                   help="optimiser (the paper: rmsprop with momentum 0.9, lr 1e-4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="RMSProp momentum")
    p.add_argument("--clip-value", type=float, default=10.0,
                   help="element-wise gradient clip to (-v, v) as in the paper; <= 0 disables")
    p.add_argument("--clip-norm", type=float, default=0.0, help="global gradient-norm clip; <= 0 disables")
    p.add_argument("--bptt-memory-slots", type=int, default=0,
                   help="memory-efficient BPTT (Gruslys et al. 2016): keep at most this many core states in the "
                        "backward pass and recompute the rest (same gradients, less memory); 0: plain BPTT")
    p.add_argument("--bptt-segment-steps", type=int, default=1,
                   help="with --bptt-memory-slots: longest stretch recomputed in one run (1: step by step, the "
                        "paper's; a few tens suits fused cores such as lstm)")
    p.add_argument("--bptt-storage", choices=["hidden", "internal", "mixed"], default="hidden",
                   help="with --bptt-memory-slots: store hidden states (BPTT-HSM), internal states of steps "
                        "(BPTT-ISM) or the cheaper of both at every split (BPTT-MSM)")
    p.add_argument("--log-every", type=int, default=50, help="batches per learning-curve point")
    p.add_argument("--early-stop-errors", type=float, default=0.01,
                   help="stop when the mean training bit errors per sequence over --window batches at the full "
                        "size range is at most this; < 0 disables")
    p.add_argument("--window", type=int, default=50, help="batches averaged for early stopping and curriculum")
    p.add_argument("--curriculum", action="store_true",
                   help="grow the largest training size from --curriculum-start by --curriculum-step each time the "
                        "windowed bit errors per sequence fall below --curriculum-threshold")
    p.add_argument("--curriculum-start", type=int, default=4, help="first largest training size")
    p.add_argument("--curriculum-step", type=int, default=2, help="size increment")
    p.add_argument("--curriculum-threshold", type=float, default=0.5, help="bit errors per sequence to move on")
    p.add_argument("--pg-coef", type=float, default=1.0,
                   help="cores with discrete access choices (rl_access): weight of the REINFORCE loss (reward of a "
                        "step = minus its cross-entropy; reward-to-go; learned linear baseline)")
    p.add_argument("--entropy-coef", type=float, default=0.01,
                   help="cores with discrete access choices: weight of the entropy bonus")
    p.add_argument("--choices", default="trained", choices=list(CHOICE_MODES),
                   help="cores with discrete access choices (rl_access): how the access process of each step is "
                        "chosen, in training and in the test. trained: sampled from the core's policy and trained by "
                        "REINFORCE (greedy in the test). random: uniform over the core's processes, no choice loss "
                        "(a lower bound). oracle: the task's hand-written access sequence fed as the stored choices, "
                        "so only the differentiable part (what is written, the controller, the readout) is trained "
                        "(an upper bound); copy only: no_op at the start flag, write_least_used at each item, no_op "
                        "at the delimiter, read_move_right at each answer step (the core's processes must include "
                        "those three)")
    p.add_argument("--eval-sizes", type=int, nargs="*", default=None,
                   help="sizes tested after training (lengths, or items for associative_recall); default "
                        + ", ".join(f"{k}: {v}" for k, v in DEFAULT_EVAL_SIZES.items())
                        + "; other tasks: their largest training size")
    p.add_argument("--eval-sequences", type=int, default=256, help="test sequences per size")
    p.add_argument("--trace", action="store_true",
                   help="store the read/write weightings over one test sequence (state fields named *weight*)")
    p.add_argument("--trace-size", type=int, default=0, help="size of the traced sequence (0: training max)")
    p.add_argument("--out", default="", help="JSON result path (default: runs/<task>_<core>_s<seed>.json)")
    p.add_argument("--save-model", default="", help="also save the model's state_dict here (.pt)")
    p.add_argument("--quiet", action="store_true", help="no per-point log lines")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        core_kwargs = json.loads(args.core_kwargs) if args.core_kwargs else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --core-kwargs {args.core_kwargs!r} is not valid JSON: {e}") from None
    if not isinstance(core_kwargs, dict):
        raise SystemExit(f"error: --core-kwargs {args.core_kwargs!r} must be a JSON object like "
                         "'{\"hidden_size\": 100}'")
    core_kwargs.update(parse_kv(args.core_arg, "--core-arg"))
    task_kwargs = parse_kv(args.task_arg, "--task-arg")
    task = make_task(args.task, **task_kwargs)
    core = make_core(args.core, task.input_size, **core_kwargs)
    peaked = peak_initial_weightings(core) if args.peak_initial_weightings else []
    if peaked:
        print(f"peaked initial weightings: {', '.join(peaked)}", flush=True)
    symmetric = slots_stay_identical(core, task.input_size)
    if symmetric:
        print("WARNING: every head weighting of this core stays exactly uniform over the slots from its initial "
              "state (constant memory + uniform initial weightings): its memory cannot be addressed by location "
              "or content. Consider --peak-initial-weightings.", flush=True)
    model = SequenceModel(core, task.target_size)
    cfg = TrainConfig(
        batch_size=args.batch_size,
        max_sequences=args.max_sequences,
        max_minutes=args.max_minutes,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        clip_value=args.clip_value if args.clip_value > 0 else None,
        clip_norm=args.clip_norm if args.clip_norm > 0 else None,
        log_every=args.log_every,
        early_stop_errors=args.early_stop_errors if args.early_stop_errors >= 0 else None,
        window=args.window,
        curriculum=args.curriculum,
        curriculum_start=args.curriculum_start,
        curriculum_step=args.curriculum_step,
        curriculum_threshold=args.curriculum_threshold,
        pg_coef=args.pg_coef,
        entropy_coef=args.entropy_coef,
        choices=args.choices,
        bptt_memory_slots=args.bptt_memory_slots,
        bptt_segment_steps=args.bptt_segment_steps,
        bptt_storage=args.bptt_storage,
        seed=args.seed,
        device=args.device,
    )
    n_params = count_parameters(model)
    label = args.label or args.core
    tag = f"{args.task}_{label}_s{args.seed}"
    out_path = args.out or os.path.join("runs", f"{tag}.json")
    print(f"{tag}: {n_params} parameters, torch threads {torch.get_num_threads()}, device {args.device}", flush=True)

    def log(point: dict) -> None:
        if not args.quiet:
            print(
                f"  seq {point['sequences']:>8d}  {point['wall_s']:>7.1f}s  loss {point['loss']:.4f}  "
                f"cost {point['cost_bits_per_seq']:.3f} bits  errors {point['bit_errors_per_seq']:.3f}/seq  "
                f"size<={point['max_size']}",
                flush=True,
            )

    result = {
        "tag": tag,
        "label": label,
        "core": args.core,
        "core_kwargs": core_kwargs,
        "choices": args.choices if has_discrete_choices(core) else None,
        "task": args.task,
        "task_kwargs": task_kwargs,
        "parameters": n_params,
        "peaked_initial_weightings": peaked,
        "slots_stay_identical_at_init": symmetric,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs".strip(),
        "command": "python3 scripts/train_supervised.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["train"] = train(model, task, cfg, log)
    print(
        f"{tag}: stopped ({result['train']['stopped']}) after {result['train']['sequences']} sequences, "
        f"{result['train']['wall_s']:.0f} s",
        flush=True,
    )
    # tasks without default sizes (parity, addition, bAbI-style, ...) are evaluated at their largest training size
    sizes = args.eval_sizes if args.eval_sizes is not None else DEFAULT_EVAL_SIZES.get(args.task, [task.max_size])
    t0 = time.perf_counter()
    result["eval"] = {str(k): v for k, v in evaluate(model, task, sizes, args.eval_sequences, device=args.device,
                                                        choices=args.choices).items()}
    result["eval_wall_s"] = round(time.perf_counter() - t0, 2)
    for k, v in result["eval"].items():
        print(f"  size {k:>4}: bit errors per sequence mean {v['mean']:.3f} median {v['median']:.1f} "
              f"perfect {100 * v['perfect_fraction']:.0f}%", flush=True)
    if has_discrete_choices(core) and args.choices == "trained":  # the policy's own choices (random/oracle: fixed)
        usage = {}
        for size in sizes:
            batch = task.sample(64, size=size, generator=torch.Generator().manual_seed(3), device=args.device)
            usage[str(size)] = choice_usage(model, batch)
        result["choice_usage"] = usage
        for size, u in usage.items():
            for phase, freq in u.items():
                top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(freq.items(), key=lambda kv: -kv[1]) if v > 0)
                print(f"  size {size:>4} {phase:>6} phase choices: {top}", flush=True)
        try:  # the greedy choices against the oracle's, where the task has one and the core its processes
            agreement = {}
            for size in sizes:
                batch = task.sample(64, size=size, generator=torch.Generator().manual_seed(3), device=args.device)
                agreement[str(size)] = oracle_agreement(model, task, batch)
        except ValueError:
            agreement = None
        if agreement is not None:
            result["oracle_agreement"] = agreement
            for size, a in agreement.items():
                print(f"  size {size:>4} greedy choices = oracle's: input {100 * a['input']:.0f}%, output "
                      f"{100 * a['output']:.0f}%, whole sequence {100 * a['whole_sequence']:.0f}%", flush=True)
    if args.trace:
        size = args.trace_size or task.max_size
        batch = task.sample(1, size=size, generator=torch.Generator().manual_seed(7), device=args.device)
        result["trace"] = record_weightings(model, batch)
        result["trace"]["size"] = size
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out_path}", flush=True)
    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
    return result


if __name__ == "__main__":
    main()
