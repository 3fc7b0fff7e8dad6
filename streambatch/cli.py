"""The ``streambatch`` command: ``convert``, ``info``, ``verify`` (and more subcommands).

Examples::

    streambatch convert train.parquet train.zarr --label y --shuffle 0
    streambatch info train.zarr
    streambatch verify train.zarr

Errors are one line on stderr and exit code 2 (bad input) or 1 (a dataset that fails
verification).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ._sizes import format_size, parse_size
from .errors import DataError, StreambatchError

__all__ = ["main", "COMMANDS"]


def _size(what: str) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            return parse_size(v, what)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _cmd_convert(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from .convert import convert
    from .convert.cluster import open_client

    with open_client(args.scheduler) if args.scheduler and not args.dry_run else nullcontext() as client:
        result = convert(
            args.src, args.dst, format=args.format, columns=args.columns, label=args.label,
            unit_rows=args.unit_rows, unit_bytes=args.unit_bytes, shard_bytes=args.shard_bytes, codec=args.codec,
            shuffle=args.shuffle, memory=args.memory, overwrite=args.overwrite, dry_run=args.dry_run,
            source_format=args.source_format, progress=None if not args.quiet else False, threads=args.threads,
            fill=_fills(args.fill), drop_nulls=args.drop_nulls, delimiter=_delimiter(args.delimiter), client=client,
        )
    if args.dry_run:
        assert isinstance(result, dict)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"plan: {result['rows']:,} rows x {result['row_bytes']} bytes = {format_size(result['bytes'])} "
                  f"-> {result['format']} ({result['codec']}), {result['units']:,} units of {result['unit_rows']} rows "
                  f"({format_size(result['unit_bytes'])}), {result['shards']} shard file(s)")
        return 0
    print(f"wrote {args.dst}")
    done = result.source if not isinstance(result, dict) else {}
    for name, n in done.get("filled", {}).items():
        print(f"filled {n:,} null(s) in column {name!r}")
    if "dropped_rows" in done:
        print(f"dropped {done['dropped_rows']:,} row(s) with a null")
    return 0


def _fills(given: list[str] | None) -> dict[str, str] | None:
    """``--fill COL=VALUE`` options as a dict; ``ValueError`` for a malformed or repeated one."""
    if not given:
        return None
    out: dict[str, str] = {}
    for g in given:
        name, eq, value = g.rpartition("=")
        if not eq or not name or not value:
            raise ValueError(f"--fill {g!r}: expected COLUMN=VALUE")
        if name in out:
            raise ValueError(f"--fill names column {name!r} twice")
        out[name] = value
    return out


def _delimiter(d: str | None) -> str | None:
    """``--delimiter``: ``tab`` and ``\\t`` (as typed in a shell) mean a tab."""
    return "\t" if d in ("tab", "\\t") else d


def _info_dict(path: str) -> dict[str, Any]:
    from .storage import load_manifest

    m = load_manifest(path)
    stored = int(m.unit_stored_nbytes.sum())
    return {
        "path": str(m.root), "storage": m.storage, "codec": m.codec, "rows": m.rows,
        "columns": [c.to_json() for c in m.columns], "units": m.n_units,
        "unit_rows": int(m.unit_rows.max()), "files": len(m.files), "decoded_bytes": m.decoded_nbytes,
        "stored_bytes": stored, "label": m.label, "fingerprint": m.fingerprint, "stats": m.stats,
        "stats_files": m.stats_files, "options": m.options, "source": m.source,
    }


def _short(v: Any) -> str:
    if isinstance(v, list):
        return f"[{len(v)} values: {', '.join(f'{x:.4g}' for x in v[:3] if x is not None)}{', ...' if len(v) > 3 else ''}]"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _meta_text(meta: dict[str, Any] | None) -> str:
    """What a column's stored integers mean, briefly: ``; category codes of ['a', 'b', ...]``."""
    if not meta:
        return ""
    if meta["type"] == "category":
        cats = meta["categories"]
        shown = ", ".join(repr(v) for v in cats[:4]) + (", ..." if len(cats) > 4 else "")
        return f"; codes of {len(cats)} {'ordered ' if meta.get('ordered') else ''}categories [{shown}]"
    tz = f", {meta['timezone']}" if meta.get("timezone") else ""
    return f"; {meta['type']}[{meta['unit']}{tz}]"


def _cmd_info(args: argparse.Namespace) -> int:
    info = _info_dict(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['storage']} ({info['codec']}), {info['rows']:,} rows, {info['units']:,} units of "
          f"<= {info['unit_rows']} rows, {info['files']} files, {format_size(info['decoded_bytes'])} decoded, "
          f"{format_size(info['stored_bytes'])} stored")
    for c in info["columns"]:
        wide = info["stats_files"].get(c["name"])  # per feature in a file: the summary over all values
        st = wide or info["stats"].get(c["name"], {})
        print(f"  {c['name']:<16} {c['dtype']:<8} shape {tuple(c['shape'])!s:<14} mean {_short(st.get('mean'))} "
              f"std {_short(st.get('std'))} min {_short(st.get('min'))} max {_short(st.get('max'))}"
              + (f" (over all values; per feature in {wide['path']})" if wide else "") + _meta_text(c.get("meta")))
    if info["label"]:
        h = info["stats"].get(info["label"], {}).get("histogram", {})
        pairs = ", ".join(f"{v}: {c:,}" for v, c in zip(h.get("values", []), h.get("counts", [])))
        print(f"  label {info['label']!r} histogram: {pairs}")
        if h.get("icc") is not None:
            print(f"  label correlation inside units (icc): {h['icc']:.3f} (0 = well mixed, 1 = sorted)")
    return 0


def _readable_manifest(path: str) -> bool:
    """Whether local ``path`` (a dataset folder or its manifest) holds a manifest this process can read."""
    from .manifest import MANIFEST_NAME
    from .io.remote import is_url

    if is_url(path):
        return False
    p = Path(path)
    p = p if p.name == MANIFEST_NAME else p / MANIFEST_NAME
    return p.is_file() and os.access(p, os.R_OK)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .errors import ManifestError
    from .storage import load_manifest
    from .storage import verify_dataset

    try:
        m = load_manifest(args.path)
        checked = verify_dataset(m)
    except (ManifestError, DataError) as e:
        if isinstance(e, ManifestError) and not _readable_manifest(args.path):
            raise  # no dataset there, or none this process can read: bad input (exit 2), not a failed check
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # pyarrow's span several
        print(f"streambatch verify: FAILED: {'; '.join(lines)}", file=sys.stderr)
        return 1
    print(f"{m.root}: OK, {m.n_units:,} units, {m.rows:,} rows; checked {checked}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "convert": _cmd_convert, "info": _cmd_info, "verify": _cmd_verify,
}


def _parser() -> argparse.ArgumentParser:
    from .convert import DEFAULT_CODEC
    from .convert.plan import cores
    from .sources import SOURCE_FORMATS
    from .storage import CODECS, DEFAULT_FORMAT, FORMATS

    p = argparse.ArgumentParser(prog="streambatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help=f"convert a dataset into a chunked {' / '.join(FORMATS)} dataset",
                       epilog="example: streambatch convert data/ train.zarr --label y --shuffle 0")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--format", choices=list(FORMATS), default=None,
                   help=f"storage format (default: {DEFAULT_FORMAT})")
    c.add_argument("--from", dest="source_format", choices=SOURCE_FORMATS, default=None,
                   help="input format (default: from the path)")
    c.add_argument("--columns", nargs="+", default=None,
                   help="columns to keep, in this order (default: all); the others are not read or checked")
    c.add_argument("--label", default=None, help="integer label column to histogram")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--unit-rows", type=int, default=None, help="rows per shuffle unit")
    g.add_argument("--unit-bytes", type=_size("--unit-bytes"), default=None, help="bytes per shuffle unit (256KiB)")
    c.add_argument("--shard-bytes", type=_size("--shard-bytes"), default="128MiB", help="bytes per file (128MiB)")
    c.add_argument("--codec", choices=list(CODECS), default=DEFAULT_CODEC,
                   help="; ".join(f"{n}: {' or '.join(f.codecs)}" for n, f in FORMATS.items()))
    c.add_argument("--shuffle", type=int, default=None, metavar="SEED", help="write rows in a random order")
    c.add_argument("--memory", type=_size("--memory"), default="1GiB", help="memory budget (1GiB)")
    c.add_argument("--fill", action="append", metavar="COL=VALUE",
                   help="put VALUE in place of the nulls of column COL (repeatable); the count is printed")
    c.add_argument("--drop-nulls", action="store_true",
                   help="leave out rows with a null in a column without --fill; the count is printed")
    c.add_argument("--delimiter", default=None, help="CSV field separator (default ','; 'tab' or '\\t' for tabs)")
    c.add_argument("--threads", type=int, default=None,
                   help="files written at once (default here: " + ", ".join(
                       f"{n} {f.default_threads(cores())}" for n, f in FORMATS.items()) + ")")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="write the files as tasks on a Dask cluster: tcp://HOST:PORT, or local:N for N worker "
                        "processes here (needs streambatch[dask]; .npy and Parquet inputs, --shuffle too)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace DST if it is a streambatch dataset or an empty folder (never the input)")
    c.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    c.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="schema, rows, units, sizes and statistics of a dataset",
                       epilog="example: streambatch info train.zarr")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="check every byte of every file of a dataset (exit 1 naming a damaged file)",
                       epilog="example: streambatch verify train.zarr")
    v.add_argument("path")
    _add_more_commands(sub)
    return p


def _add_more_commands(sub: Any) -> None:
    """Subcommands that need torch register here (imported lazily when run)."""
    try:
        from .cli_run import add_commands
    except ImportError:
        return
    add_commands(sub, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 verification failed, 2 bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (StreambatchError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"streambatch {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streambatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
