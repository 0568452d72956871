"""torch-rechub 0.9.0 DIN / DIEN on compare_peers.py's padded export; runs in the rechub venv (no canctr import).

Matched to canctr's defaults where torch-rechub exposes the setting (see README.md for the rest):
embedding 18 (histories and DIEN's negatives share the item / cate tables through `shared_with`, row 0 is
padding), MLP 200-80 (Dice is fixed by the library), DIN activation unit 80-40 with sigmoid units, DIEN's
auxiliary-loss weight 1 (library default 0.2), Adam 1e-3 without weight decay (CTRTrainer's default has
1e-5), one epoch with CTRTrainer.train_one_epoch (fit() = that + a model.pth save) over the library's
DataGenerator loader. Library design, not settings: DIN attends to each history field separately without
softmax (rechub's softmax would also weight padding); DIEN runs one GRU + AUGRU per history field with
hidden size = that field's embedding size (18, i.e. 2 x 18 in all, vs canctr's one 36-wide GRU over the
concatenation), a bilinear AUGRU attention (no activation-unit MLP) and a dot-product auxiliary loss.
"""

from __future__ import annotations

import _common as c
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch_rechub.basic.features import SequenceFeature, SparseFeature
from torch_rechub.models.ranking import DIEN, DIN
from torch_rechub.trainers import CTRTrainer
from torch_rechub.utils.data import DataGenerator

SEQUENCES = ("hist_item", "hist_cate", "neg_hist_item", "neg_hist_cate")


def build(model: str, vocab: dict[str, int]) -> torch.nn.Module:
    user = [SparseFeature("user", vocab["user"], embed_dim=c.EMBED_DIM)]
    target = [SparseFeature(name, vocab[name], embed_dim=c.EMBED_DIM, padding_idx=0) for name in ("item", "cate")]

    def sequences(prefix: str) -> list[SequenceFeature]:
        return [SequenceFeature(f"{prefix}{t}", vocab[t], embed_dim=c.EMBED_DIM, pooling="concat", shared_with=t,
                                padding_idx=0) for t in ("item", "cate")]

    mlp = {"dims": list(c.MLP_DIMS)}
    if model == "din":
        attention = {"dims": list(c.ATTENTION_DIMS), "activation": "sigmoid", "use_softmax": False}
        return DIN(user, sequences("hist_"), target, mlp_params=mlp, attention_mlp_params=attention)
    if model == "dien":
        return DIEN(user, sequences("hist_"), sequences("neg_hist_"), target, mlp_params=mlp, alpha=c.AUX_WEIGHT)
    raise SystemExit(f"torch-rechub worker: unknown model {model!r} (din | dien)")


def inputs(arrays: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    names = ("user", "item", "cate", "hist_item", "hist_cate") + (SEQUENCES[2:] if model == "dien" else ())
    return {name: arrays[name] for name in names}


def main() -> None:
    args = c.parse_args(__doc__.split("\n")[0])
    c.set_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = c.load_split(args.data, "train"), c.load_split(args.data, "test")
    model = build(args.model, c.vocab_sizes(args.data))
    x_test, y_test = inputs(test, args.model), test["label"]
    # the library's loaders (per-sample dicts, default collate); predictions use its test loader (batch B)
    train_dl, _, test_dl = DataGenerator(inputs(train, args.model), train["label"]).generate_dataloader(
        x_val=x_test, y_val=y_test, x_test=x_test, y_test=y_test, batch_size=args.batch_size)
    # DIEN returns (prediction, aux_loss): loss_mode=False adds the second term to the BCE
    trainer = CTRTrainer(model, optimizer_params={"lr": c.LR, "weight_decay": 0.0}, n_epoch=1,
                         loss_mode=args.model != "dien", device="cpu")

    def score() -> float:  # predict() leaves the model in eval mode; train_one_epoch set train mode at its start
        prob = np.asarray(trainer.predict(model, test_dl), dtype=np.float64)
        model.train()
        return float(roc_auc_score(y_test, prob))

    clock = c.StepClock()
    curve = c.LearningCurve(args.eval_at_samples, args.batch_size, len(train["label"]), clock, score)
    t_call = clock.now()
    trainer.train_one_epoch(train_dl)
    clock.close()
    curve.close()
    timing = clock.summary(len(train["label"]), args.batch_size, args.warmup_batches, t_call)

    auc = score()
    c.emit({"library": "torch-rechub", "model": args.model, "batch_size": args.batch_size,
            "train_samples": len(train["label"]), **timing, "test_auc": auc, "n_params": c.n_params(model),
            "curve": [*curve.points, {"samples": len(train["label"]), "auc": auc}]})


if __name__ == "__main__":
    main()
