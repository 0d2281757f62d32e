"""Run under ``torchrun --nproc_per_node=2`` by test_distributed_reading.py: each rank records what it reads.

Usage: two_rank_reader.py DATA_PATH TOKENIZER OUT_DIR
"""

import json
import sys

import torch.distributed as dist

from m2dist.config import DataConfig
from m2dist.data import build_dataloader


def batches(loader, limit=None):
    out = []
    for batch in loader:
        out.append(batch["sample_ids"].tolist())
        if limit is not None and len(out) == limit:
            break
    return out


def main() -> None:
    path, tokenizer, out_dir = sys.argv[1:4]
    dist.init_process_group("gloo")
    cfg = DataConfig(path=path, tokenizer=tokenizer)

    def loader(**kw):
        # The small val split, read as training data (shuffled), keeps the test quick.
        return build_dataloader(cfg, split="val", train=True, micro_batch_size=4, seq_len=64, **kw)

    full = batches(loader())
    first = loader()
    head = batches(first, limit=5)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    tail = batches(resumed)
    tensor_parallel = batches(loader(tensor_parallel_size=2), limit=5)
    with open(f"{out_dir}/rank{dist.get_rank()}.json", "w") as fh:
        json.dump({"full": full, "head": head, "tail": tail, "state": state, "tp": tensor_parallel}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
