"""The model directory and the encoder that runs it.

``manifest`` (what a model is; no torch), ``modules`` (the torch encoders), ``tokenizer`` (hardening
and set-up), ``directory`` (safe loading and atomic saving), ``pretrained`` (sentence-transformers
directories in), ``encode`` (``TorchEncoder``, the worker's ``Encoder``).
"""
