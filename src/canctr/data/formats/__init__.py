"""One module per raw input format: its reader(s), its defaults and its `prepare_<format>` pipeline.

    amazon      McAuley 2014 reviews + meta (JSON / Python-literal lines)
    sequences   S3-Rec `<Name>.txt` + `<Name>_item2attributes.json` (+ time intervals)
    dien        DIEN's processed files (local_*, reviews-info, item-info, *_voc.pkl)
    movielens   MovieLens-1M ratings.dat + movies.dat (+ users.dat)
    taobao      Tianchi UserBehavior.csv (MIMN's protocol or DIN's)
    synthetic   a generated co-action world with a known Bayes-optimal click probability

Each builds samples with `data.samples`, encodes and writes them with `data.encode` (vocabularies from
`data.vocab`, the ragged store of `data.store`) under the `spec.behaviour_spec` preset; raw lines are read
through `data.lines`. The modules load on demand (`from canctr.data.formats import taobao`), so that one
format never pays for another's imports.
"""
