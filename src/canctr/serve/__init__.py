"""Serving a trained run: export (ONNX / TorchScript + manifest) and raw-id mapping.

    export.py   tensor-only model wrapper, `export_run`, the manifest
    vocab.py    `RawIdMapper`: raw ids -> indices as prepare encoded them; `make_batch` from mapped arrays
    cli.py      `canctr export`

Nothing here imports the training loop except `export_run` (to load the checkpoint).
"""
