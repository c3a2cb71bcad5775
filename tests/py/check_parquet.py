#!/usr/bin/env python3
"""Checks pipe's Parquet artifacts with real pyarrow, independently of the Rust reader.

Usage:
    python tests/py/check_parquet.py PATH [PATH ...]
    python tests/py/check_parquet.py KIND=PATH [...]

KIND is one of `captions` (ingest's captions.parquet), `images` (images.parquet),
`tokens` (tokens.parquet) or `hypotheses` (the caption stage's captions.parquet). Without
`KIND=`, it is taken from the file name (`captions.parquet` is told apart from the caption
stage's file by its columns). Needs `pyarrow` (pip install pyarrow). Prints one line per
file and exits non-zero, naming file and column, on the first mismatch. Schemas are those of
docs/CONTRACTS.md; any of pyarrow's string and list layouts is accepted, since writers
differ (polars writes string views as plain strings).
"""
import os
import re
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STRING = "string"
U32 = pa.uint32()
U64 = pa.uint64()
F64 = pa.float64()
LIST_U32 = "list<uint32>"

SCHEMAS = {
    "captions": [("image", STRING), ("caption_index", U32), ("caption", STRING), ("split", STRING)],
    "images": [("image", STRING), ("path", STRING), ("content_hash", STRING), ("bytes", U64),
               ("width", U32), ("height", U32)],
    "tokens": [("image", STRING), ("caption_index", U32), ("split", STRING), ("tokens", LIST_U32)],
    "hypotheses": [("image", STRING), ("caption", STRING), ("log_prob", F64)],
}
SPLITS = {"train", "dev", "test", "none"}


def type_matches(actual, expected):
    if expected == STRING:
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or \
            getattr(pa.types, "is_string_view", lambda _: False)(actual)
    if expected == LIST_U32:
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual) or \
            getattr(pa.types, "is_list_view", lambda _: False)(actual)
        return is_list and actual.value_type == U32
    return actual == expected


def guess_kind(path, names):
    base = os.path.basename(path)
    if base == "captions.parquet":
        return "captions" if "caption_index" in names else "hypotheses"
    for kind in ("images", "tokens"):
        if base == f"{kind}.parquet":
            return kind
    raise SystemExit(f"{path}: cannot tell the kind from the name; pass KIND=PATH")


def fail(path, message):
    raise SystemExit(f"{path}: {message}")


def check_values(path, kind, table):
    if "split" in table.column_names:
        found = set(table.column("split").to_pylist())
        if not found <= SPLITS:
            fail(path, f"column `split` has unknown values {sorted(found - SPLITS)}")
    if kind == "images":
        for value in table.column("content_hash").to_pylist():
            if not re.fullmatch(r"[0-9a-f]{64}", value):
                fail(path, f"column `content_hash` has a non-blake3 value {value!r}")
    if kind == "tokens":
        lengths = pc.list_value_length(table.column("tokens"))
        if table.num_rows and pc.min(lengths).as_py() < 2:
            fail(path, "column `tokens` has a row without start and end ids")


def check(path, kind=None):
    table = pq.read_table(path)
    schema = table.schema
    kind = kind or guess_kind(path, schema.names)
    if kind not in SCHEMAS:
        fail(path, f"unknown kind {kind!r}; one of {sorted(SCHEMAS)}")
    for name, expected in SCHEMAS[kind]:
        if name not in schema.names:
            fail(path, f"no column `{name}` (has {schema.names})")
        actual = schema.field(name).type
        if not type_matches(actual, expected):
            fail(path, f"column `{name}` is {actual}, expected {expected}")
        if table.column(name).null_count:
            fail(path, f"column `{name}` has {table.column(name).null_count} nulls")
    check_values(path, kind, table)
    print(f"ok {kind} {path}: {table.num_rows} rows, {', '.join(schema.names)}")


def main(args):
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    for arg in args:
        kind, sep, path = arg.partition("=")
        if sep and kind in SCHEMAS:
            check(path, kind)
        else:
            check(arg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
