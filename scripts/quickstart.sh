#!/usr/bin/env bash
# The main job on the embedded default, end to end on CPU (or GPUs, if present):
# sample corpus -> sentencepiece tokenizer -> MDS shards (verified) -> tiny M2-GPT on 2 processes with
# checkpoints -> automatic resume -> evaluation -> consolidated export -> where the TensorBoard logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || export DS_ACCELERATOR=cpu
M2=".venv/bin/m2dist"
NPROC=${NPROC:-2}
DATA=data/sample
RUN=runs/quickstart
CONFIG=configs/smoke/m2-gpt-tiny.yaml
ARGS=(data.path=$DATA/mds/pile data.tokenizer=$DATA/tok.model trainer.run_dir=$RUN checkpoint.dir=$RUN/checkpoints)
step() { printf '\n==> %s\n' "$*"; }

step "1/8 embedded sample corpus (Pile, C4 and ImageNet formats) in $DATA"
$M2 prep sample --output $DATA

step "2/8 sentencepiece tokenizer"
$M2 tokenizer train --input $DATA/pile/train --format pile --vocab-size 1024 --output $DATA/tok

step "3/8 MDS shards (train and val), then verify them"
$M2 prep pile --input $DATA/pile/train --output $DATA/mds/pile --tokenizer $DATA/tok.model --seq-len 128 --workers 2
$M2 prep pile --input $DATA/pile/val.jsonl.zst --split val --output $DATA/mds/pile --tokenizer $DATA/tok.model --seq-len 128
$M2 prep verify $DATA/mds/pile --tokenizer $DATA/tok.model

rm -rf "$RUN"
step "4/8 train a tiny M2-GPT for 20 steps on $NPROC processes (checkpoints every 10)"
.venv/bin/torchrun --standalone --nproc_per_node=$NPROC -m m2dist train --config $CONFIG "${ARGS[@]}" \
  trainer.max_steps=20 checkpoint.every=10

step "5/8 resume automatically from the newest checkpoint and continue to step 30"
.venv/bin/torchrun --standalone --nproc_per_node=$NPROC -m m2dist train --config $CONFIG "${ARGS[@]}" \
  trainer.max_steps=30 checkpoint.every=10

step "6/8 evaluate the final checkpoint"
$M2 eval --config $CONFIG "${ARGS[@]}" --checkpoint $RUN/checkpoints/latest

step "7/8 export one consolidated model"
$M2 export $RUN/checkpoints/latest --output $RUN/model.safetensors

step "8/8 results"
tail -n 3 $RUN/metrics.jsonl
echo "TensorBoard: .venv/bin/tensorboard --logdir $RUN/tensorboard"
