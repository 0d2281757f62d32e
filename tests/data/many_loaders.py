"""Run under ``torchrun --nproc_per_node=2`` by test_two_jobs.py, several jobs at once: each builds, reads from and
drops a loader N times, so its streaming datasets take and release shared-memory prefixes while the others do.

Usage: many_loaders.py DATA_PATH TOKENIZER N OUT_DIR
"""

import gc
import sys

import torch.distributed as dist

from m2dist.config import DataConfig
from m2dist.data import build_dataloader


def main() -> None:
    path, tokenizer, n, out_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    cfg = DataConfig(path=path, tokenizer=tokenizer)
    firsts = []
    for _ in range(n):
        loader = build_dataloader(cfg, split="val", train=True, micro_batch_size=4, seq_len=64)
        firsts.append(next(iter(loader))["sample_ids"].tolist())
        del loader
        gc.collect()
    assert all(f == firsts[0] for f in firsts), firsts  # every dataset read its own, intact, shared state
    dist.barrier()
    with open(f"{out_dir}/rank{dist.get_rank()}.ok", "w") as fh:
        fh.write(f"{n}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
