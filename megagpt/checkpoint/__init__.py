"""Save and resume training: one copy of the state, every rank writing its own part, resharded on load.

A checkpoint is a folder `step00000050/` written with torch.distributed.checkpoint (DCP): each rank
writes one file `__R_0.distcp` (`__R_K.distcp`, one a piece, when states are offloaded: see
Checkpointer._write_files) holding only what it owns (its ZeRO partition of the fp32 weights and
of Adam's two moments, of its tensor-parallel slice, of its pipeline stage), and `.metadata` says,
for every parameter of the one-process model, which rectangle of it each piece is. Under ZeRO-3 a
rank's range of its tp slice is at most three rectangles (a partial row, whole rows, a partial row),
views of its flat fp32 partition; a tp split into blocks (QKV) cuts them further. Nothing is written
twice: tied and tp-replicated parameters are written by one rank only, about 12 bytes a parameter in
fp32. Beside it: `trainer_state.pt` (Adam's step, lr schedule, step counts, client state: data
position), `rng_rank00000.pt`, ... (each rank's generators), `layout.json`, `model_config.json` and
the tokenizer. Loading under any layout (dp, tp, pp, ZeRO stage) asks DCP for exactly the
rectangles the new rank owns, so each rank reads only those byte ranges and nobody holds the model.
See docs/checkpoints.md for why DCP rather than DeepSpeed's own or universal checkpoints.

The folder is written as `step00000050.tmp/`, renamed only once all ranks have finished, and
`latest` is replaced atomically after that: a crash while saving leaves the previous checkpoint in
charge, and the next save removes the partial `.tmp` folder. A save that fills its disk (or quota)
on any rank is agreed on by all ranks: the partial folder is removed at once, `latest` stays, and
the run ends (exit 2) naming checkpoint.dir, its free bytes and what the save needs. With
`checkpoint.async_save` the state is copied to host memory and a background thread writes, hashes
and publishes it while training continues (the coordination runs over a process group of its own, so
it never interleaves with training collectives); the next save, and the end of the run, wait for it.
Only the newest `keep_last` published checkpoints stay, plus the one the run resumed from and the
one `latest` names.

`checksums.json` records the size and xxh3-128 hash of every file, hashed at save by all ranks
(each a share of the files), and verify() checks them before a resume: a truncated or overwritten
file is named, with the previous checkpoint to fall back to, instead of failing deep inside torch.
xxh3 rather than sha256: the checks guard against damage, not forgery, and xxh3 hashes about 6x
faster (bench/integrity.py), which matters when every save and resume reads the whole state back.

Every checkpoint is self-describing: `model_config.json` and the tokenizer's file(s) sit beside the
shards, so evaluation, generation, fine-tuning and export need nothing but the folder. A *model
folder* (written by `python -m megagpt.convert from-hf` and `megagpt.finetune`) has the same two
plus one `model.safetensors`; everything that reads a model accepts either.
"""

from megagpt.checkpoint.checkpointer import Checkpointer, load, saved_layout
from megagpt.checkpoint.folders import (
    LATEST,
    CheckpointError,
    DamagedCheckpoint,
    latest,
    previous,
    prune,
    published,
    replacing_folder,
    resolve,
    tag_for,
)
from megagpt.checkpoint.integrity import CHECKSUMS, verify, write_checksums
from megagpt.checkpoint.pretrained import (
    MODEL_CONFIG,
    WEIGHTS,
    consolidated_state_dict,
    find_tokenizer,
    load_pretrained,
    read_model_config,
    save_model,
    write_description,
)
from megagpt.checkpoint.sharded import Pieces, rectangles, sharded_state

__all__ = [
    "CHECKSUMS", "LATEST", "MODEL_CONFIG", "WEIGHTS", "CheckpointError", "Checkpointer",
    "DamagedCheckpoint", "Pieces", "consolidated_state_dict", "find_tokenizer", "latest", "load",
    "load_pretrained", "previous", "prune", "published", "read_model_config", "rectangles",
    "replacing_folder", "resolve", "save_model", "saved_layout", "sharded_state", "tag_for", "verify",
    "write_checksums", "write_description",
]
