"""``lowbit merge BASE ADAPTER OUT --method NAME``: a LoRA adapter merged into its base, quantized again."""

from __future__ import annotations

from lowbit.commands.method_args import add_method_args, config_from_args


def add_arguments(m) -> None:
    m.add_argument("base", help="the folder the adapter was trained on (lowbit or dense)")
    m.add_argument("adapter", help="PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
    m.add_argument("out", help="output folder")
    add_method_args(m)
    m.add_argument("--max-shard-size", default="2GB")
    m.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder that holds no model")


def run(args) -> int:
    from lowbit.training.merge import merge_adapter

    out, remark = merge_adapter(args.base, args.adapter, args.out, config_from_args(args),
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote {out}: {remark}")
    return 0
