"""`canctr prepare movielens`: MovieLens-1M ratings -> the encoded format of `schema.py`.

MovieLens is not one of the CAN paper's datasets; it is the usual sequence-CTR stand-in (DIN/DIEN ports,
DeepCTR examples). The recipe, on the shared event pipeline (`pipeline.event_samples`):

* every rating is one sample, the user's first included (with an empty history); label = rating >=
  `positive_threshold` (4). Labels come from the ratings, so no negative items are sampled;
* history = the user's earlier rated movies in time order, the most recent `max_len`. `history="all"`
  (default) keeps every earlier rating, liked or not: having rated a movie is the behaviour (the user
  watched it), and the rating itself is what is predicted; `history="positive"` keeps only the earlier
  liked ones (DIEN's "clicked items" reading). Ratings at the same second keep file order and are
  counted (`timestamp_ties`);
* category = the first genre listed in movies.dat; `genres="multi"` also writes every genre of the
  target as `item_cates` [N, G] and of every item as vocab/item_cates.npy (schema.py);
* users go to test with probability `test_fraction` (seeded), vocabularies are fitted on train, one
  auxiliary negative per history position is drawn popularity-proportionally (DIEN's auxiliary loss),
  and the Cartesian (target, history) pair ids are built as for the other formats;
* users.dat (optional) adds `user_gender`, `user_age`, `user_occupation` [N] with their own train-fitted
  vocabularies (sizes in `schema.feature_vocab`); users missing from it get 0, counted.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from canctr.data import readers
from canctr.data.pipeline import PrepareOptions, SideInfo, _prepare_events
from canctr.data.readers import Interner
from canctr.data.schema import Schema

USER_FEATURES = ("user_gender", "user_age", "user_occupation")  # users.dat columns 2-4
DEFAULT_MAX_LEN = 50  # 1 M samples: a width of 100 would make every [N, L] array 400 MB


def prepare_movielens(
    ratings: str | os.PathLike,
    movies: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    *,
    users: str | os.PathLike | None = None,
    positive_threshold: int = 4,
    history: str = "all",
    genres: str = "first",
) -> Schema:
    """`ratings.dat[.gz]` + `movies.dat` (+ `users.dat`) -> prepared directory `out` (opts.protocol is
    ignored: every rating is a sample)."""
    if history not in ("all", "positive"):
        raise ValueError(f"history must be 'all' or 'positive', got {history!r}")
    if genres not in ("first", "multi"):
        raise ValueError(f"genres must be 'first' or 'multi', got {genres!r}")
    if not 1 <= positive_threshold <= 5:
        raise ValueError(f"positive_threshold must be in 1..5, got {positive_threshold}")
    log = readers.read_movielens_ratings(ratings, skip_bad_rows=opts.skip_bad_rows)
    skipped = dict(log.skipped_rows)
    genres_of = readers.read_movielens_movies(movies, skip_bad_rows=opts.skip_bad_rows, skipped=skipped)
    all_cates = {code: g for code, name in enumerate(log.items.names) if (g := genres_of.get(name))}
    label = log.rating >= positive_threshold  # [E] in file order

    side, counts = SideInfo(), {"positive_threshold": positive_threshold}
    if users is not None:
        profile = readers.read_movielens_users(users, skip_bad_rows=opts.skip_bad_rows, skipped=skipped)
        for k, name in enumerate(USER_FEATURES):
            values = Interner()
            codes = [values(profile[u][k]) if u in profile else -1 for u in log.users.names]
            side.user_features[name] = (np.array(codes, np.int64), values.names)
        counts["users_without_profile"] = sum(u not in profile for u in log.users.names)
    opts = dataclasses.replace(opts, protocol="all")
    return _prepare_events(
        out,
        log,
        {code: g[0] for code, g in all_cates.items()},
        opts,
        kind="movielens",
        paths=[ratings, movies] + ([users] if users is not None else []),
        skipped_rows=skipped,
        options={
            **{k: v for k, v in dataclasses.asdict(opts).items() if k != "protocol"},
            "positive_threshold": positive_threshold,
            "history": history,
            "genres": genres,
            "users": users is not None,
        },
        dataset=f"movielens:{Path(ratings).resolve().parent.name}",
        protocol="ratings",
        sampling={"labels": label, "history_events": None if history == "all" else label, "min_history": 0},
        all_cates=all_cates if genres == "multi" else None,
        side=side,
        counts=counts,
    )
