"""Dataset pipelines behind ``m2dist tokenizer train`` and ``m2dist prep``.

- ``documents.py``: reading .zst / .gz / plain files line by line; Pile, C4 and text records; bad input kept track of
- ``tokenizer_training.py``: sentencepiece models with m2dist's special ids and byte fallback
- ``packing.py`` + ``text_prep.py``: the one text pipeline (tokenize, EOS, pack, MDS) for the Pile and C4
- ``image_prep.py``: ImageNet folders into jpeg/label MDS
- ``parts.py``: parallel, resumable parts (temp dir + rename, done-markers keyed by the arguments), merge_index
- ``report.py``: report.json, the summary, --strict
- ``verify.py``: shard hashes, counts, decoding
- ``sample_corpus.py``: the small embedded corpus of ``m2dist prep sample``; ``synthetic.py``: inputs for tests/benchmarks
"""
