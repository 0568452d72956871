"""deepctr-torch 0.3.0 DIN / DIEN on compare_peers.py's padded export; runs in the deepctr venv (no canctr import).

Matched to canctr's defaults where deepctr-torch exposes the setting (see README.md for the rest):
embedding 18 (histories and DIEN's negatives share the item / cate tables), DNN 200-80, attention
80-40 with sigmoid units and softmax-normalised scores over the valid positions, DIEN with AUGRU and the
auxiliary loss (weight 1) on neg_hist_*, Adam 1e-3, no L2, one epoch with the library's own fit().
deepctr-torch ties DIEN's GRU hidden size to the concatenated history embedding, 2 x 18 = 36 = canctr's.
Its DNN cannot use Dice (DNN builds Dice for 3-D inputs only), so the head uses PReLU.
"""

from __future__ import annotations

import _common as c
import numpy as np
import torch
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DIEN, DIN
from sklearn.metrics import roc_auc_score


def feature_columns(vocab: dict[str, int], width: int, negatives: bool) -> list:
    cols = [SparseFeat(name, vocab[name], embedding_dim=c.EMBED_DIM) for name in ("user", "item", "cate")]
    hist = ["hist_item", "hist_cate"] + (["neg_hist_item", "neg_hist_cate"] if negatives else [])
    for name in hist:
        table = name.rsplit("_", 1)[1]  # item | cate: the shared embedding table
        cols.append(VarLenSparseFeat(SparseFeat(name, vocab[table], embedding_dim=c.EMBED_DIM, embedding_name=table),
                                     maxlen=width, length_name="hist_len"))
    return cols


def build(model: str, vocab: dict[str, int], width: int, seed: int) -> torch.nn.Module:
    common = {"dnn_hidden_units": c.MLP_DIMS, "dnn_activation": "prelu", "att_activation": "sigmoid",
              "att_weight_normalization": True, "l2_reg_embedding": 0.0, "seed": seed, "device": "cpu"}
    if model == "din":
        return DIN(feature_columns(vocab, width, negatives=False), ["item", "cate"],
                   att_hidden_size=c.ATTENTION_DIMS, **common)
    if model == "dien":
        return DIEN(feature_columns(vocab, width, negatives=True), ["item", "cate"], gru_type="AUGRU",
                    use_negsampling=True, alpha=c.AUX_WEIGHT, att_hidden_units=c.ATTENTION_DIMS, **common)
    raise SystemExit(f"deepctr-torch worker: unknown model {model!r} (din | dien)")


def inputs(arrays: dict[str, np.ndarray], model: torch.nn.Module) -> dict[str, np.ndarray]:
    """fit()/predict() take {feature name: array}; 1-D arrays become one column each."""
    return {name: arrays[name] for name in model.feature_index}


def main() -> None:
    args = c.parse_args(__doc__.split("\n")[0])
    c.set_threads(args.threads)
    train, test = c.load_split(args.data, "train"), c.load_split(args.data, "test")
    model = build(args.model, c.vocab_sizes(args.data), train["hist_item"].shape[1], args.seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=c.LR), "binary_crossentropy", metrics=[])
    x_train, y_train = inputs(train, model), train["label"]

    x_test = inputs(test, model)

    def score() -> float:  # predict() leaves the model in eval mode; fit() set train mode once, at its start
        prob = model.predict(x_test, batch_size=args.eval_batch_size).ravel()
        model.train()
        return float(roc_auc_score(test["label"], prob))

    clock = c.StepClock()
    curve = c.LearningCurve(args.eval_at_samples, args.batch_size, len(y_train), clock, score)
    t_call = clock.now()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True)
    clock.close()
    curve.close()
    timing = clock.summary(len(y_train), args.batch_size, args.warmup_batches, t_call)

    auc = score()
    c.emit({"library": "deepctr-torch", "model": args.model, "batch_size": args.batch_size,
            "train_samples": len(y_train), **timing, "test_auc": auc, "n_params": c.n_params(model),
            "curve": [*curve.points, {"samples": len(y_train), "auc": auc}]})


if __name__ == "__main__":
    main()
