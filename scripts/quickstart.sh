#!/usr/bin/env bash
# The main job on the embedded default, end to end on CPU (or GPUs, if present):
# sample corpus -> sentencepiece tokenizer -> MDS shards (verified) -> tiny M2-GPT on 2 processes, tensor-parallel,
# with sharded checkpoints -> automatic resume at another parallel layout -> again as context-parallel -> consolidated export -> evaluation ->
# where the metrics and TensorBoard logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
.venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || export DS_ACCELERATOR=cpu
M2=".venv/bin/m2dist"
NPROC=${NPROC:-2}
DATA=data/sample
RUN=runs/quickstart
CONFIG=configs/smoke/m2-gpt-tiny.yaml
ARGS=(data.path=$DATA/mds/pile data.tokenizer=$DATA/tok.model trainer.run_dir=$RUN checkpoint.dir=$RUN/checkpoints
      checkpoint.every=10 deepspeed.zero_stage=1)
step() { printf '\n==> %s\n' "$*"; }

step "1/10 embedded sample corpus (Pile, C4 and ImageNet formats) in $DATA"
$M2 prep sample --output $DATA

step "2/10 sentencepiece tokenizer"
$M2 tokenizer train --input $DATA/pile/train --format pile --vocab-size 1024 --output $DATA/tok

step "3/10 MDS shards: Pile (packed, train and val, verified), C4 (one document per sample), ImageNet (train and val)"
$M2 prep pile --input $DATA/pile/train --output $DATA/mds/pile --tokenizer $DATA/tok.model --seq-len 128 --workers 2
$M2 prep pile --input $DATA/pile/val.jsonl.zst --split val --output $DATA/mds/pile --tokenizer $DATA/tok.model --seq-len 128
$M2 prep verify $DATA/mds/pile --tokenizer $DATA/tok.model
$M2 prep c4 --input $DATA/c4/c4-train.*.json.gz --no-pack --seq-len 128 --output $DATA/mds/c4 --tokenizer $DATA/tok.model
$M2 prep c4 --input $DATA/c4/c4-validation.*.json.gz --split val --no-pack --seq-len 128 --output $DATA/mds/c4 \
  --tokenizer $DATA/tok.model
$M2 prep imagenet --input $DATA/imagenet --output $DATA/mds/imagenet --split train
$M2 prep imagenet --input $DATA/imagenet --output $DATA/mds/imagenet --split val

step "4/10 smoke-train a tiny M2-BERT (masked LM) and a tiny M2-ViT, one process each"
rm -rf runs/quickstart-bert runs/quickstart-vit
$M2 train --config configs/smoke/m2-bert-tiny.yaml trainer.max_steps=10 trainer.eval_every=10 \
  trainer.run_dir=runs/quickstart-bert checkpoint.dir=runs/quickstart-bert/checkpoints
$M2 train --config configs/smoke/m2-vit-tiny.yaml trainer.max_steps=10 trainer.eval_every=10 \
  trainer.run_dir=runs/quickstart-vit checkpoint.dir=runs/quickstart-vit/checkpoints

rm -rf "$RUN"
step "5/10 train a tiny M2-GPT for 20 steps on $NPROC processes as tensor-parallel 2 (checkpoints every 10)"
.venv/bin/torchrun --standalone --nproc_per_node=$NPROC -m m2dist train --config $CONFIG "${ARGS[@]}" \
  trainer.max_steps=20 parallel.tensor=2

step "6/10 resume automatically from the newest checkpoint at another layout (tensor 1 x data $NPROC), to step 30"
.venv/bin/torchrun --standalone --nproc_per_node=$NPROC -m m2dist train --config $CONFIG "${ARGS[@]}" \
  trainer.max_steps=30 parallel.tensor=1

step "7/10 resume again as context-parallel $NPROC (each rank holds 1/$NPROC of every 128-token sequence), to step 40"
.venv/bin/torchrun --standalone --nproc_per_node=$NPROC -m m2dist train --config $CONFIG "${ARGS[@]}" \
  trainer.max_steps=40 parallel.context=$NPROC

step "8/10 export the final sharded checkpoint as one consolidated model"
$M2 export $RUN/checkpoints/step_40 --output $RUN/model.safetensors

step "9/10 evaluate the exported model on the validation split"
$M2 eval $RUN/model.safetensors data.path=$DATA/mds/pile --steps 0 --cpu

step "10/10 results"
tail -n 2 $RUN/metrics.jsonl
echo "Metrics: $RUN/metrics.jsonl   Checkpoints: $RUN/checkpoints   Model: $RUN/model.safetensors"
echo "TensorBoard: .venv/bin/tensorboard --logdir $RUN/tb"
