"""Command-line pre-training, single process or multi-GPU with torch DDP:

    python -m avlib.pretrain --profile cpu --run-dir runs/cpu/02_pretraining
    torchrun --nproc_per_node 8 -m avlib.pretrain --profile paper --run-dir runs/paper/02_pretraining \\
        --set data.root=/data/vggsound pretrain.batch_size=64

``fit`` detects torchrun (``RANK``/``WORLD_SIZE``), wraps the model in DistributedDataParallel and
shards the training data with a DistributedSampler; ``pretrain.batch_size`` is per process, so the
effective batch is ``batch_size * accum_steps * world_size`` (the official lr rule scales with it).
The checkpoint ``<run-dir>/avmae.pt`` is what the downstream notebooks take as ``pretrain_ckpt``.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from .config import make_config, parse_assignments
from .tasks import pretrain
from .utils import cleanup, init_distributed, is_main_process


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avlib.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="config profile (smoke | cpu | paper | ...)")
    ap.add_argument("--run-dir", required=True, help="checkpoints, history.json and avmae.pt go here")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides with dotted keys, e.g. pretrain.epochs=100 model.norm_pix_loss=false "
                         "(each value is parsed to its field's type and checked)")
    args = ap.parse_args(argv)
    cfg = make_config(args.profile, overrides=parse_assignments(args.set))
    init_distributed()
    try:
        result = pretrain(cfg, args.run_dir, device=args.device)
        if is_main_process():
            print(f"pre-training done in {result.seconds:.0f} s: {result.checkpoint}")
            print({k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)})
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
