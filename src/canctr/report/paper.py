"""The CAN paper's reference numbers, as data, mapped to this library's registry names.

Source: W. Bian, K. Wu, L. Ren, Q. Pi, Y. Zhang, C. Xiao, X.-R. Sheng, Y.-N. Zhu, Z. Chan, N. Mou, X. Luo,
S. Xiang, G. Zhou, X. Zhu, H. Deng. "CAN: Feature Co-Action Network for Click-Through Rate Prediction",
WSDM 2022 (arXiv:2011.05625 v3), Table 3 (sequential datasets: AUC mean ± std over 5 runs) and Table 2
(DNN-based Cartesian vs CAN: parameters as multiples of the DNN's).

Only the CAN paper's own numbers are here: its DIEN row (0.8346 on Books) is the CAN paper's, not the
DIEN paper's 0.8453, and DIN has no row (it is not in the CAN tables).
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = (
    "Bian et al., \"CAN: Feature Co-Action Network for Click-Through Rate Prediction\", WSDM 2022 "
    "(arXiv:2011.05625), Tables 2 and 3; AUC mean ± std over 5 runs"
)

AMAZON_BOOKS = "Amazon (Books)"
TAOBAO = "Taobao"


@dataclass(frozen=True)
class PaperResult:
    row: str  # the paper's row label
    table: str  # where the AUC comes from
    auc: float
    auc_std: float
    params_x_dnn: float | None  # Table 2's parameter multiple; None where the paper gives none


# registry name -> (paper row, table, {column: (auc, std)}); Table 3 unless noted
_AUC: dict[str, tuple[str, str, dict[str, tuple[float, float]]]] = {
    "ffm": ("FFM", "Table 3", {AMAZON_BOOKS: (0.7523, 0.0004), TAOBAO: (0.7918, 0.0016)}),
    "dnn": ("DNN (Embedding & MLP)", "Table 3", {AMAZON_BOOKS: (0.7640, 0.0007), TAOBAO: (0.8470, 0.0011)}),
    "deepfm": ("DeepFM", "Table 3", {AMAZON_BOOKS: (0.7682, 0.0005), TAOBAO: (0.8500, 0.0012)}),
    "deepffm": ("DeepFFM", "Table 3", {AMAZON_BOOKS: (0.7711, 0.0004), TAOBAO: (0.8545, 0.0016)}),
    "xdeepfm": ("xDeepFM", "Table 3", {AMAZON_BOOKS: (0.7697, 0.0005), TAOBAO: (0.8573, 0.0012)}),
    "pnn": ("PNN", "Table 3", {AMAZON_BOOKS: (0.7801, 0.0002), TAOBAO: (0.8649, 0.0014)}),
    "ncf": ("NCF", "Table 3", {AMAZON_BOOKS: (0.7820, 0.0005), TAOBAO: (0.8717, 0.0023)}),
    "onn": ("ONN", "Table 3", {AMAZON_BOOKS: (0.7851, 0.0007), TAOBAO: (0.8752, 0.0011)}),
    "dien": ("DIEN", "Table 3", {AMAZON_BOOKS: (0.8346, 0.0007), TAOBAO: (0.9262, 0.0011)}),
    "can-dnn": ("CAN-DNN", "Table 3", {AMAZON_BOOKS: (0.7935, 0.0007), TAOBAO: (0.8828, 0.0016)}),
    "can-dien": ("CAN-DIEN", "Table 3", {AMAZON_BOOKS: (0.8468, 0.0008), TAOBAO: (0.9388, 0.0013)}),
    "cartesian": ("DNN + Cartesian", "Table 2", {AMAZON_BOOKS: (0.7891, 0.0007), TAOBAO: (0.8863, 0.0012)}),
    "can-cartesian": (
        "DNN + CAN + Cartesian", "Table 2", {AMAZON_BOOKS: (0.8054, 0.0007), TAOBAO: (0.8967, 0.0017)}
    ),
}

# Table 2 parameter counts as multiples of the DNN's (Amazon, Taobao). CAN-DNN is Table 2's "+ CAN" row.
_PARAMS_X_DNN: dict[str, dict[str, float]] = {
    "dnn": {AMAZON_BOOKS: 1.0, TAOBAO: 1.0},
    "cartesian": {AMAZON_BOOKS: 17.0, TAOBAO: 16.5},
    "can-dnn": {AMAZON_BOOKS: 3.3, TAOBAO: 2.6},
    "can-cartesian": {AMAZON_BOOKS: 18.8, TAOBAO: 15.3},
}


def paper_column(dataset: str) -> str | None:
    """The paper's column to show beside a prepared dataset (`Schema.dataset`), or None.

    Every Amazon-review protocol ("amazon:...", "sequences:...", "dien:...") is set beside Amazon (Books),
    the paper's Amazon column, whatever the category; "taobao:..." beside Taobao.
    """
    name = dataset.lower()
    if name.startswith(("amazon", "sequences", "dien")):
        return AMAZON_BOOKS
    if name.startswith("taobao"):
        return TAOBAO
    return None


def paper_results(column: str) -> dict[str, PaperResult]:
    """Registry name -> the paper's result in `column` (AMAZON_BOOKS or TAOBAO)."""
    if column not in (AMAZON_BOOKS, TAOBAO):
        raise ValueError(f"unknown paper column {column!r}; expected {AMAZON_BOOKS!r} or {TAOBAO!r}")
    return {
        name: PaperResult(row, table, *cols[column], _PARAMS_X_DNN.get(name, {}).get(column))
        for name, (row, table, cols) in _AUC.items()
    }
