"""Sharded checkpoints: atomic commit, manifest + checksums, ``latest``, keep-last-K, resharding, export.

Layout of ``checkpoint.dir``::

    step_<N>/                      a committed checkpoint (renamed from .tmp_step_<N> once complete)
      mp_rank_XX_model_states.pt   DeepSpeed's files: model (+ optimizer at ZeRO 0) per tensor rank
      zero_pp_rank_D_mp_rank_XX_optim_states.pt   ZeRO optimizer shards, per data x tensor rank
      ranks/rank_<R>.pt            per global rank: RNG states, data-loader state
      trainer_state.json           step, consumed samples, tokens, the parallel layout, per-parameter shard info
      config.yaml                  the resolved config
      manifest.json                every file with size and sha256; written last, before the rename
    latest                         name of the newest committed checkpoint, written after the rename
    .tmp_step_<N>/                 a save in progress (also an asynchronous one); removed at the next start
    .conversions/                  temporary conversions for a resume at another layout (DeepSpeed's universal form,
                                   ZeRO-0 files cut for another tensor-parallel size); removed once loaded
"""

from m2dist.checkpoint.files import verify_checkpoint
from m2dist.checkpoint.manager import CheckpointManager, Resumable

__all__ = ["CheckpointManager", "Resumable", "verify_checkpoint"]
