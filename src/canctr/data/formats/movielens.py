"""MovieLens-1M (`canctr prepare movielens`): readers and pipeline.

    ratings.dat[.gz]  `UserID::MovieID::Rating::Timestamp`
    movies.dat        `MovieID::Title::Genres` (Latin-1: titles have accents; genres joined by |)
    users.dat         `UserID::Gender::Age::Occupation::Zip-code` (optional)

MovieLens is not one of the CAN paper's datasets; it is the usual sequence-CTR stand-in (DIN/DIEN ports,
DeepCTR examples). The recipe, on the shared event pipeline (`samples.event_samples`):

* every rating is one sample, the user's first included (with an empty history); label = rating >=
  `positive_threshold` (4). Labels come from the ratings, so no negative items are sampled;
* history = the user's earlier rated movies in time order, the most recent `max_len`. `history="all"`
  (default) keeps every earlier rating, liked or not: having rated a movie is the behaviour (the user
  watched it), and the rating itself is what is predicted; `history="positive"` keeps only the earlier
  liked ones (DIEN's "clicked items" reading). Ratings at the same second keep file order and are
  counted (`timestamp_ties`);
* category = the first genre listed in movies.dat; `genres="multi"` also writes every genre of the
  target as the `item_cates` sequence group (reading the cate table) and of every item as
  vocab/item_cates.npy;
* users go to test with probability `test_fraction` (seeded), vocabularies are fitted on train and the
  Cartesian (target, history) pair keys are written as for the other formats;
* users.dat (optional) adds the user-side categorical fields `user_gender`, `user_age`, `user_occupation`
  with their own train-fitted vocabularies (sizes in `schema.vocab`); users missing from it get 0, counted.
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from pathlib import Path

import numpy as np

from canctr.data.encode import SideInfo, prepare_events
from canctr.data.lines import RowError, Rows, int64_codes, int_token
from canctr.data.samples import Interactions, PrepareOptions
from canctr.data.schema import Schema
from canctr.data.vocab import Interner

USER_FEATURES = ("user_gender", "user_age", "user_occupation")  # users.dat columns 2-4
DEFAULT_MAX_LEN = 50  # most recent ratings kept: 1 M samples, most with long histories

# what a line with this many '::' fields probably is, for the error hint
_ML_FILES = {
    3: "movies.dat (MovieID::Title::Genres)",
    4: "ratings.dat (UserID::MovieID::Rating::Timestamp)",
    5: "users.dat (UserID::Gender::Age::Occupation::Zip-code)",
}


def _ml_fields(text: str, n: int) -> list[str]:
    f = text.split("::")
    if len(f) != n:
        looks = _ML_FILES.get(len(f))
        hint = f"; this looks like {looks}: are the files swapped?" if looks else ""
        if len(f) == 1 and ("\t" in text or "," in text):
            hint = "; MovieLens-1M .dat files are '::'-separated (this is another release's format?)"
        raise RowError(f"expected {n} '::'-separated fields, got {len(f)}{hint}")
    return f


def read_movielens_ratings(path: str | os.PathLike, *, skip_bad_rows: bool = False) -> Interactions:
    """MovieLens-1M `ratings.dat[.gz]`: one event per rating, with the rating in `Interactions.rating`."""
    users, items = Interner(), Interner()
    u, i, t, r = array("q"), array("q"), array("q"), array("b")
    skipped: dict[str, int] = {}
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 4)
            uid, mid = int_token(f[0], "UserID"), int_token(f[1], "MovieID")
            rating, ts = int_token(f[2], "Rating"), int_token(f[3], "Timestamp")
            if not 1 <= rating <= 5:
                raise RowError(f"Rating {rating} is outside 1..5")
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        u.append(users(str(uid)))
        i.append(items(str(mid)))
        t.append(ts)
        r.append(rating)
        rows.good += 1
    rows.finish()
    rating_arr = np.frombuffer(r, np.int8).copy() if len(r) else np.zeros(0, np.int8)
    return Interactions(int64_codes(u), int64_codes(i), int64_codes(t), users, items, skipped, rating=rating_arr)


def read_movielens_movies(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> dict[str, list[str]]:
    """MovieLens-1M `movies.dat` (Latin-1: titles have accents) -> {MovieID: [genres in file order]}."""
    out: dict[str, list[str]] = {}
    rows = Rows(path, skip_bad_rows, skipped, encoding="latin-1")
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 3)
            mid = str(int_token(f[0], "MovieID"))
            genres = f[2].split("|")
            if not all(g.strip() for g in genres):
                raise RowError(f"Genres {f[2]!r} has an empty genre")
            if mid in out:
                raise RowError(f"MovieID {mid} appears twice")
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        out[mid] = genres
        rows.good += 1
    rows.finish()
    return out


def read_movielens_users(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> dict[str, tuple[str, str, str]]:
    """MovieLens-1M `users.dat` -> {UserID: (gender, age bucket, occupation)} as raw strings."""
    out: dict[str, tuple[str, str, str]] = {}
    rows = Rows(path, skip_bad_rows, skipped, encoding="latin-1")
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 5)
            uid = str(int_token(f[0], "UserID"))
            if f[1] not in ("M", "F"):
                raise RowError(f"Gender must be M or F, got {f[1]!r}")
            age, occupation = int_token(f[2], "Age"), int_token(f[3], "Occupation")
            if uid in out:
                raise RowError(f"UserID {uid} appears twice")
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        out[uid] = (f[1], str(age), str(occupation))
        rows.good += 1
    rows.finish()
    return out


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
    log = read_movielens_ratings(ratings, skip_bad_rows=opts.skip_bad_rows)
    skipped = dict(log.skipped_rows)
    genres_of = read_movielens_movies(movies, skip_bad_rows=opts.skip_bad_rows, skipped=skipped)
    all_cates = {code: g for code, name in enumerate(log.items.names) if (g := genres_of.get(name))}
    label = log.rating >= positive_threshold  # [E] in file order

    side, counts = SideInfo(), {"positive_threshold": positive_threshold}
    if users is not None:
        profile = read_movielens_users(users, skip_bad_rows=opts.skip_bad_rows, skipped=skipped)
        for k, name in enumerate(USER_FEATURES):
            values = Interner()
            codes = [values(profile[u][k]) if u in profile else -1 for u in log.users.names]
            side.user_features[name] = (np.array(codes, np.int64), values.names)
        counts["users_without_profile"] = sum(u not in profile for u in log.users.names)
    opts = dataclasses.replace(opts, protocol="all")
    return prepare_events(
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


__all__ = ["DEFAULT_MAX_LEN", "USER_FEATURES", "prepare_movielens", "read_movielens_movies",
           "read_movielens_ratings", "read_movielens_users"]
