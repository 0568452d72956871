"""Serving a trained run: export (ONNX / TorchScript + manifest), raw-id mapping and the HTTP service.

    export.py   tensor-only model wrapper, `export_run`, the manifest
    vocab.py    `RawIdMapper`: raw ids -> indices as prepare encoded them; `make_batch` from mapped arrays
    scorer.py   `Scorer`: one user's raw ids x K candidates -> probabilities (torch module or ONNX Runtime)
    app.py      the HTTP service (FastAPI): request validation, /v1/score, /v1/model, reload

Nothing here imports the training loop except `export_run` (to load the checkpoint). The commands
(`canctr export`, `canctr predict`, `canctr serve`) are wired in canctr.cli.serve.
"""
