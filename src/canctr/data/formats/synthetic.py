"""A seeded co-action world (`canctr prepare synthetic`) whose Bayes-optimal click probability is known.

Generative process (U users, M items, C categories; every draw from one seeded numpy Generator):
    * item i has a category (balanced, shuffled), a popularity weight (Zipf, exponent `popularity`), a
      bias b_i, a target-role latent vector p_i and a history-role latent vector q_i (both in R^d);
    * user u likes `favourite_cates` categories; a history of L_u ~ U[hist_min, hist_max] items and
      `targets_per_user` impressed targets are drawn the same way: with probability `taste` from a
      favourite category, else from the whole catalogue, popularity-weighted either way (so histories and
      targets of train and test users come from one process);
    * the hidden pairwise table, for target t and history item h:
          W[t, h] = linear * <p_t, q_h> + strong * 1[<p_t, q_h> > threshold] + Wc[cate t, cate h]
      (a rank-d bilinear part, a sparse set of strong pairs, and a category-pair table Wc), and
          logit = base + b_t + sum_{h in history} W[t, h],   click ~ Bernoulli(sigmoid(logit)).
      The Bernoulli draw is the only noise and the user enters only through the history, so
      sigmoid(logit) is exactly the Bayes-optimal click probability given (target, history).
The click probability `true_prob` = sigmoid(logit) is stored per sample and the AUC it reaches on the
test labels is schema.counts["bayes_auc"]: no model can expect to beat it.

Why CAN should win: the signal is a sum over the history of a function of the (target, history item)
*pair*. CAN computes exactly such a sum (a target-conditioned micro-MLP applied to every history item).
DNN sees only the target embedding next to the sum-pooled history, so it must recover the bilinear part
through its MLP (a product of two inputs) and can hardly count the strong pairs (a count of thresholded
pairs is not a function of an 18-dim pooled sum, except approximately); DIN's target attention sits in
between.

The samples go through the shared encoder (`encode.encode_and_save`): train-fitted vocabularies and
Cartesian pair keys; users are split at random (`test_fraction`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from canctr.data.encode import Names, encode_and_save
from canctr.data.samples import PrepareOptions, RawSplit, ragged_arange, rngs
from canctr.data.schema import Schema
from canctr.metrics import auc, logloss


@dataclass(frozen=True)
class WorldConfig:
    """Size and shape of the world; the defaults are tuned so that `canctr demo` is quick on 2 CPU cores
    and CAN-DNN lands clearly closer to the Bayes AUC than DNN."""

    users: int = 8000
    items: int = 300
    cates: int = 20
    seed: int = 0
    hist_min: int = 5
    hist_max: int = 20
    targets_per_user: int = 10
    favourite_cates: int = 2
    taste: float = 0.7  # share of draws from the user's favourite categories
    popularity: float = 0.8  # Zipf exponent of item popularity
    latent_dim: int = 4  # d, rank of the bilinear part
    linear: float = 0.2  # scale of <p_t, q_h>
    strong: float = 1.0  # weight of a strong pair
    threshold: float = 2.5  # <p_t, q_h> above this is a strong pair (p, q ~ N(0, I_d)): ~10 % of pairs
    cate_scale: float = 0.05  # std of the category-pair table Wc
    bias_scale: float = 0.5  # std of the item bias b_i
    base: float = -1.0

    def __post_init__(self) -> None:
        if self.users < 10 or self.items < 2 or not 1 <= self.cates <= self.items:
            raise ValueError("need users >= 10, items >= 2 and 1 <= cates <= items")
        if not 0 <= self.hist_min <= self.hist_max or self.targets_per_user < 1:
            raise ValueError("need 0 <= hist_min <= hist_max and targets_per_user >= 1")
        if not 1 <= self.favourite_cates <= self.cates or not 0.0 <= self.taste <= 1.0:
            raise ValueError("need 1 <= favourite_cates <= cates and 0 <= taste <= 1")


@dataclass
class World:
    """The hidden parameters (M items, C categories)."""

    config: WorldConfig
    item_cate: np.ndarray  # [M]
    item_weight: np.ndarray  # [M] popularity, sums to 1
    item_bias: np.ndarray  # [M]
    p: np.ndarray  # [M, d] target role
    q: np.ndarray  # [M, d] history role
    cate_pair: np.ndarray  # [C, C] Wc

    @classmethod
    def make(cls, cfg: WorldConfig, rng: np.random.Generator) -> World:
        m = cfg.items
        weight = 1.0 / np.arange(1, m + 1) ** cfg.popularity
        return cls(
            config=cfg,
            item_cate=rng.permutation(m) % cfg.cates,
            item_weight=rng.permutation(weight / weight.sum()),
            item_bias=rng.normal(0.0, cfg.bias_scale, m),
            p=rng.normal(size=(m, cfg.latent_dim)),
            q=rng.normal(size=(m, cfg.latent_dim)),
            cate_pair=rng.normal(0.0, cfg.cate_scale, (cfg.cates, cfg.cates)),
        )

    def affinity(self, target: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """<p_target, q_hist> elementwise (same shapes)."""
        return np.einsum("...d,...d->...", self.p[target], self.q[hist])

    def pair_weight(self, target: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """W[target, hist] elementwise (same shapes)."""
        c, dot = self.config, self.affinity(target, hist)
        return (
            c.linear * dot
            + c.strong * (dot > c.threshold)
            + self.cate_pair[self.item_cate[target], self.item_cate[hist]]
        )

    def logit(self, target: np.ndarray, hist: np.ndarray, hist_len: np.ndarray) -> np.ndarray:
        """[N] targets, ragged [H] histories -> [N] logits."""
        pair = self.pair_weight(np.repeat(target, hist_len), hist)
        sums = np.bincount(np.repeat(np.arange(target.size), hist_len), weights=pair, minlength=target.size)
        return self.config.base + self.item_bias[target] + sums

    def draw_items(self, favourites: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """favourites [K, F] categories of the user behind each draw -> [K] items (module docstring)."""
        c, k = self.config, favourites.shape[0]
        cate = favourites[np.arange(k), rng.integers(0, favourites.shape[1], k)]  # [K]
        # popularity-weighted draw inside category c: its items split the interval [c, c + 1) by weight
        by_cate = np.argsort(self.item_cate, kind="stable")  # [M] items grouped by category
        w, size = self.item_weight[by_cate], np.bincount(self.item_cate, minlength=c.cates)
        total = np.bincount(self.item_cate, self.item_weight, minlength=c.cates)
        within = np.cumsum(w) - np.repeat(np.cumsum(total) - total, size)  # cumulative weight in the category
        upper = self.item_cate[by_cate] + within / np.repeat(total, size)  # [M] right end of each interval
        upper[np.cumsum(size) - 1] = np.arange(1, c.cates + 1)  # exact ends: no rounding across categories
        liked = by_cate[np.searchsorted(upper, cate + rng.random(k), side="right")]
        anywhere = rng.choice(c.items, size=k, p=self.item_weight)
        return np.where(rng.random(k) < c.taste, liked, anywhere)


def generate(cfg: WorldConfig) -> tuple[World, dict[str, np.ndarray]]:
    """Draw the world and every user's samples. Returns the world and flat arrays over N = U * T samples:
    user, item, hist_len, label, prob [N] and the ragged histories hist [sum(hist_len)] (every impression
    of a user repeats that user's history)."""
    rng = np.random.default_rng(cfg.seed)
    world = World.make(cfg, rng)
    u, t = cfg.users, cfg.targets_per_user
    # [U, F] distinct favourite categories per user: the first F of a random permutation of the C
    favourites = np.argsort(rng.random((u, cfg.cates)), axis=1)[:, : cfg.favourite_cates]
    n_hist = rng.integers(cfg.hist_min, cfg.hist_max + 1, u)  # [U]
    user_hist = world.draw_items(np.repeat(favourites, n_hist, axis=0), rng)  # [sum n_hist]
    user = np.repeat(np.arange(u), t)  # [N]
    item = world.draw_items(favourites[user], rng)
    hist_len = n_hist[user]
    starts = np.cumsum(n_hist) - n_hist
    hist = user_hist[ragged_arange(starts[user], hist_len)]  # every impression shares its user's history
    prob = 1.0 / (1.0 + np.exp(-world.logit(item, hist, hist_len)))
    label = (rng.random(user.size) < prob).astype(np.int8)
    return world, {
        "user": user,
        "item": item,
        "hist_len": hist_len,
        "hist": hist,
        "label": label,
        "prob": prob,
    }


def prepare_synthetic(out: str | os.PathLike, cfg: WorldConfig, opts: PrepareOptions) -> Schema:
    """Generate the world `cfg` and write it as a prepared directory (opts: test_fraction, max_len, seed
    of the split / auxiliary negatives; the world itself is seeded by cfg.seed)."""
    if opts.max_len < cfg.hist_max:
        raise ValueError(
            f"max_len {opts.max_len} < hist_max {cfg.hist_max}: histories would be cut and "
            "true_prob would no longer be the Bayes-optimal probability of the stored sample"
        )
    world, s = generate(cfg)
    rng_split, _, _ = rngs(opts.seed)
    is_test = (rng_split.random(cfg.users) < opts.test_fraction)[s["user"]]  # [N] by user
    offsets = np.cumsum(s["hist_len"]) - s["hist_len"]
    splits = {}
    for split, keep in (("train", ~is_test), ("test", is_test)):
        rows = np.flatnonzero(keep)
        hist = s["hist"][ragged_arange(offsets[rows], s["hist_len"][rows])]
        splits[split] = RawSplit(
            label=s["label"][rows],
            group=s["user"][rows],
            user=s["user"][rows],
            item=s["item"][rows],
            cate=world.item_cate[s["item"][rows]],
            hist_len=s["hist_len"][rows],
            hist_item=hist,
            hist_cate=world.item_cate[hist],
            values={"true_prob": s["prob"][rows].astype(np.float32)},
        )
    test = splits["test"]
    counts: dict[str, Any] = {
        "users": cfg.users,
        "items": int(np.unique(np.concatenate([s["item"], s["hist"]])).size),
        "categories": cfg.cates,
        "bayes_auc": round(auc(test.label, test.values["true_prob"]), 6),
        "bayes_logloss": round(logloss(test.label, test.values["true_prob"]), 6),
        # share of (target, history item) pairs that are strong pairs
        "strong_pair_share": round(
            float(np.mean(world.affinity(np.repeat(s["item"], s["hist_len"]), s["hist"]) > cfg.threshold)), 6
        ),
    }
    names = Names(
        user=[f"u{i}" for i in range(cfg.users)],
        item=[f"i{i}" for i in range(cfg.items)],
        cate=[f"c{i}" for i in range(cfg.cates)],
    )
    return encode_and_save(
        out,
        splits,
        names,
        dataset=f"synthetic:u{cfg.users}-i{cfg.items}-s{cfg.seed}",
        protocol="synthetic",
        opts=opts,
        sources=[],
        counts=counts,
        options={
            **{k: v for k, v in dataclasses.asdict(opts).items() if k != "protocol"},
            "world": dataclasses.asdict(cfg),
        },
    )


__all__ = ["World", "WorldConfig", "generate", "prepare_synthetic"]
