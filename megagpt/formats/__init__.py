"""The formats the corpus pipeline writes and the trainer reads: token shards (`shards`:
webdataset tars, manifest, sha256 per shard) and tokenizers (`tokenizer`: sentencepiece BPE and
GPT-2's byte-level BPE).

The one part of megagpt that `pipelines/` imports, so it imports nothing else of megagpt and no
torch: the dependency runs pipelines -> megagpt.formats, never the trainer into pipelines.
"""
