#!/usr/bin/env bash
# One-shot benchmark run on a lent machine (16 CPU cores, one NVIDIA GPU), in the repository root:
#
#   bash tools/device_bench.sh                            # on the device; $OUT is set by the runner
#   DEVICE_BENCH_QUICK=1 bash tools/device_bench.sh       # smoke run anywhere (every step --quick)
#
# It writes machine facts, installs the wheels the device lacks (.whl/: zarr, numcodecs,
# google-crc32c, donfig, PyYAML, packaging, typing_extensions; carried there as `carry: [".whl"]`)
# into /tmp/site, makes the `tab` dataset (2,000,000 rows, ~1.05 GB, label-sorted) and the `img`
# one (100,000 rows, ~1.2 GB) and their Zarr copies under /tmp/sbdata, then runs, most important
# first, each under its own `timeout`:
#
#   1. bench_gpu.py --repeats 2 (the device= path on tab and img; --legacy adds the manual variants)
#   2. bench_scaling.py --stores img:zarr:none,tab:zarr:none --consumer touch --threads 1,2,4,8,16
#      --workers 0,2,4 --repeats 1 (issue 16: img at 16 threads >= 5x one thread, the loader alone)
#   3. bench_convert.py --only 'npy -> zarr (none)' --no-codec --repeats 3   (only if time is left)
#   4. bench_convert.py --scheduler local:1 --scheduler local:$(nproc) --repeats 1   (the Dask row:
#      16 workers against one; only if time is left and dask + distributed import, i.e. their
#      wheels were carried in .whl; its log is folded into convert.log)
#   5. bench_images.py --quick --threads $(nproc) (decoding 2,000 JPEGs on every core against one,
#      the DataLoader and the loader; only if time is left and Pillow + simplejpeg import, i.e.
#      their wheels were carried in .whl; its log is folded into facts.txt, its table is in
#      RESULTS.md)
#
# Budget (hard limit 420 s of wall time; this script aims at DEVICE_BENCH_BUDGET_S=390):
#   facts + wheels + import check        ~10 s
#   datasets (npy ~7 s, zarr ~2-3 s)      ~15 s   (measured on 2 cores: 7.0 s + 2.1 s)
#        + img (npy + zarr, ~1.2 GB)      ~15 s   (not yet measured on the device)
#   1. gpu                               ~50-90 s, timeout min(150, left - 20)
#        per dataset 3 warm-up + 4 x 2 epochs (~1-2 s each; the long step's ~1.5-2x),
#        two step calibrations ~3-8 s, CUDA start-up; records written as each row ends
#   2. scaling                           ~100-200 s, timeout min(230, left - 30)
#        in process 5 x ~6 s; DataLoader w0 ~6 s, w2/w4/w8 2 epochs each at an unknown rate on
#        16 cores (2 cores: 74k samples/s with 2 workers = 27 s per epoch: the worst case)
#   3. convert                           ~20-30 s, timeout min(120, left - 25), only with >= 45 s
#   4. cluster                           ~25-40 s (two LocalClusters start, ~5-10 s; one zstd
#        conversion of 1.05 GB on 1 worker, ~10-15 s, then on 16), timeout min(90, left - 15),
#        only with >= 40 s
#   RESULTS.md regenerated from all records (~3 s, timeout <= 30 s within what is left)
# Rehearsal on a 2-core CPU-only box at full size, before the gpu step moved first and gained img:
# 371 s in all (scaling stopped by its timeout during num_workers=8 and wrote 7 configurations,
# gpu ended at 125 s of its 128, convert skipped);
# 16 cores should need far less. A step that hits its timeout gets SIGTERM (then SIGKILL 10 s
# later): bench_scaling then writes the configurations it finished (marked partial); bench_gpu
# writes each variant as it ends.
#
# $OUT receives at most 8 files: facts.txt (machine facts, set-up and step timings),
# scaling.log, gpu.log, convert.log, scaling.jsonl, gpu.jsonl, convert.jsonl (the records this
# run appended to benchmarks/records/, copied every 10 s and after every step) and RESULTS.md (regenerated on
# the device from all records). Without $OUT a temporary folder is used and printed.
#
# It appends to benchmarks/records/ and rewrites benchmarks/RESULTS.md and the plots of the tree it
# runs in: on your own machine run it in a copy of the working tree, e.g.
#   git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C /tmp/copy
#   cd /tmp/copy && DEVICE_BENCH_QUICK=1 DEVICE_BENCH_PY=/work/main/.venv/bin/python bash tools/device_bench.sh
#
# Environment: DEVICE_BENCH_STEPS (default "scaling gpu convert cluster images"), DEVICE_BENCH_SCALING_ARGS
# (bench_scaling arguments; ';' separates several runs), DEVICE_BENCH_SCALING_CAP (seconds per
# scaling run, 230), DEVICE_BENCH_QUICK=1 (every step --quick), DEVICE_BENCH_PY (default python3),
# DEVICE_BENCH_WHEELS (default .whl), DEVICE_BENCH_SITE (default /tmp/site), DEVICE_BENCH_DATA
# (default /tmp/sbdata), DEVICE_BENCH_BUDGET_S (default 390), DEVICE_BENCH_GPU_REPEATS (default 2).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
QUICK=${DEVICE_BENCH_QUICK:-0}
PY=${DEVICE_BENCH_PY:-python3}
WHEELS=${DEVICE_BENCH_WHEELS:-.whl}
SITE=${DEVICE_BENCH_SITE:-/tmp/site}
DATA=${DEVICE_BENCH_DATA:-/tmp/sbdata}
BUDGET=${DEVICE_BENCH_BUDGET_S:-390}
GPU_REPEATS=${DEVICE_BENCH_GPU_REPEATS:-2}
STEPS=${DEVICE_BENCH_STEPS:-scaling gpu convert cluster images}
# bench_scaling arguments; a second run (with a ';' between) runs after the first in the same step
SCALING_ARGS=${DEVICE_BENCH_SCALING_ARGS:---stores img:zarr:none,tab:zarr:none --consumer touch --threads 1,2,4,8,16 --workers 0,2,4}
SCALING_CAP=${DEVICE_BENCH_SCALING_CAP:-230}
OUT=${OUT:-$(mktemp -d /tmp/device_bench_out.XXXXXX)}
mkdir -p "$OUT"
FACTS="$OUT/facts.txt"
QFLAG=()
[ "$QUICK" = 1 ] && QFLAG=(--quick)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
RECORDS=benchmarks/records

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(date +%s) + START )); }
note() { echo "[$(elapsed)s] $*" | tee -a "$FACTS"; }

# Lines already in each records file: only what this run appends goes to $OUT.
declare -A BEFORE
for name in scaling gpu convert; do
    f="$RECORDS/$name.jsonl"
    BEFORE[$name]=$( [ -f "$f" ] && wc -l < "$f" || echo 0 )
done
collect() {
    local name f
    for name in scaling gpu convert; do
        f="$RECORDS/$name.jsonl"
        if [ -f "$f" ] && [ "$(wc -l < "$f")" -gt "${BEFORE[$name]}" ]; then
            tail -n +"$(( BEFORE[$name] + 1 ))" "$f" > "$OUT/$name.jsonl"
        fi
    done
    [ -f benchmarks/RESULTS.md ] && cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
}

# run_step NAME CAP RESERVE MIN CMD...: timeout = min(CAP, left - RESERVE); skipped below MIN s.
run_step() {
    local name=$1 cap=$2 reserve=$3 min=$4
    shift 4
    local t=$(( $(left) - reserve ))
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt "$min" ]; then
        note "SKIP $name: ${t}s available, needs ${min}s"
        return 0
    fi
    note "START $name (timeout ${t}s): $*"
    local t0=$(date +%s)
    # --foreground: the signal goes to the benchmark itself (which stops its DataLoader workers),
    # not to its whole process group.
    timeout --foreground -k 10 "$t" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    note "END $name: rc $rc$( [ "$rc" = 124 ] && echo ' (timed out)'), $(( $(date +%s) - t0 ))s"
    collect
    return 0
}

# ------------------------------------------------------------------ machine facts
{
    echo "# device_bench.sh facts ($(date -u +%Y-%m-%dT%H:%M:%SZ)), quick=$QUICK budget=${BUDGET}s"
    echo "== git"; git rev-parse HEAD 2>/dev/null || echo "(no .git here)"
    echo "== nproc"; nproc
    echo "== lscpu"; lscpu 2>/dev/null | grep -E '^(Model name|Socket|Core|Thread|CPU\(s\)|NUMA node\(s\)|L3)' || true
    echo "== free -g"; free -g
    echo "== df -h"; df -h /tmp /dev/shm . 2>&1
    echo "== nvidia-smi -L"; nvidia-smi -L 2>&1 || true
    nvidia-smi --query-gpu=name,memory.total,driver_version,pstate,clocks.sm,clocks.max.sm,power.limit,pcie.link.gen.max,pcie.link.width.max --format=csv 2>&1 || true
    echo "== python"; command -v "$PY"
    "$PY" - <<'EOF' 2>&1
import os, platform, sys
print("python", sys.version.replace("\n", " "), platform.platform())
print("cpus usable", len(os.sched_getaffinity(0)))
for mod in ("torch", "numpy", "pyarrow", "psutil", "matplotlib", "fsspec", "packaging", "typing_extensions",
            "yaml", "zarr", "numcodecs", "google_crc32c", "donfig"):
    try:
        m = __import__(mod)
        print(f"{mod} {getattr(m, '__version__', '?')} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{mod}: not importable ({type(exc).__name__}: {exc})")
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
EOF
} >> "$FACTS" 2>&1
cat "$FACTS"

# ------------------------------------------------------------------ wheels
mkdir -p "$SITE"
shopt -s nullglob
WHL=("$WHEELS"/*.whl)
shopt -u nullglob
if [ "${#WHL[@]}" -gt 0 ]; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${WHL[@]}" >> "$FACTS" 2>&1; then
        note "installed ${#WHL[@]} wheels into $SITE with pip"
    else
        # No pip, or wheels for another Python: unpack the ones this interpreter can load.
        note "pip install failed (see above); unpacking the matching wheels into $SITE instead"
        "$PY" - "$SITE" "${WHL[@]}" >> "$FACTS" 2>&1 <<'EOF'
import sys, zipfile
tag = f"-cp{sys.version_info[0]}{sys.version_info[1]}-"
for wheel in sys.argv[2:]:
    if tag in wheel or "-none-any" in wheel:
        zipfile.ZipFile(wheel).extractall(sys.argv[1])
        print("unpacked", wheel)
    else:
        print("skipped (not for this Python)", wheel)
EOF
    fi
else
    note "no wheels in $WHEELS: using what $PY already has"
fi
# streambatch runs from the working tree (no install): a bare dist-info gives it a version, so the
# records' machine line says which streambatch ran instead of None.
SB_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
mkdir -p "$SITE/streambatch-$SB_VERSION.dist-info"
printf 'Metadata-Version: 2.1\nName: streambatch\nVersion: %s\n' "$SB_VERSION" \
    > "$SITE/streambatch-$SB_VERSION.dist-info/METADATA"
IMPORTS='import streambatch, zarr, numcodecs, google_crc32c, donfig
print("imports:", "streambatch", streambatch.__file__, "| zarr", zarr.__version__, zarr.__file__,
      "| numcodecs", numcodecs.__version__)'
BASE_PYTHONPATH=${PYTHONPATH:-}
export PYTHONPATH="$SITE:$PWD${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
if ! "$PY" -c "$IMPORTS" >> "$FACTS" 2>&1; then
    export PYTHONPATH="$PWD${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
    if "$PY" -c "$IMPORTS" >> "$FACTS" 2>&1; then
        note "the wheels in $SITE do not import (see above); using $PY's own packages"
    else
        note "FATAL: streambatch or its dependencies do not import (see facts.txt); nothing measured"
        collect
        exit 1
    fi
fi
tail -n 1 "$FACTS"

# Copy the new records every 10 s too, so a run stopped from outside still returns them.
( while sleep 10; do collect; done ) > /dev/null 2>&1 &
COLLECTOR=$!
trap 'kill "$COLLECTOR" 2>/dev/null' EXIT

# ------------------------------------------------------------------ datasets
run_step datasets 120 200 30 "$PY" - "$DATA" "$QUICK" <<'EOF'
import sys, time
sys.path.insert(0, "benchmarks")
from pathlib import Path
import bench_throughput as bt
data, quick = Path(sys.argv[1]), sys.argv[2] == "1"
root = bt.data_root(data, quick)
for kind in ("tab", "img"):
    rows = bt.rows_for(kind, quick)
    t0 = time.perf_counter()
    npy = bt.ensure_npy(root, kind, rows)
    t1 = time.perf_counter()
    bt.ensure_store(npy, bt.store_path(root, kind, "zarr", "none"), "zarr", "none", rows)
    t2 = time.perf_counter()
    print(f"datasets under {root}: {kind}-npy {rows:,} rows {t1 - t0:.1f} s, {kind}.zarr {t2 - t1:.1f} s")
EOF
# (its log is folded into facts.txt to keep $OUT at 8 files)
[ -f "$OUT/datasets.log" ] && { cat "$OUT/datasets.log" >> "$FACTS"; rm -f "$OUT/datasets.log"; }

# ------------------------------------------------------------------ 1. gpu (issue 18's rows: first)
[[ " $STEPS " == *" gpu "* ]] && run_step gpu 150 20 45 "$PY" benchmarks/bench_gpu.py --data "$DATA" \
    --repeats "$GPU_REPEATS" "${QFLAG[@]}"

# ------------------------------------------------------------------ 2. scaling
if [[ " $STEPS " == *" scaling "* ]]; then
    IFS=';' read -r -a SCALING_RUNS <<< "$SCALING_ARGS"
    for i in "${!SCALING_RUNS[@]}"; do
        read -r -a A <<< "${SCALING_RUNS[$i]}"
        run_step "scaling$( [ "$i" -gt 0 ] && echo "$i")" "$SCALING_CAP" 30 60 "$PY" benchmarks/bench_scaling.py \
            --data "$DATA" --repeats 1 "${A[@]}" "${QFLAG[@]}"
    done
fi

# ------------------------------------------------------------------ 3. convert
[[ " $STEPS " == *" convert "* ]] && run_step convert 120 25 45 "$PY" benchmarks/bench_convert.py --data "$DATA" \
    --only 'npy -> zarr (none)' --no-codec --repeats 3 "${QFLAG[@]}"

# ------------------------------------------------------------------ 4. convert on a Dask cluster
if [[ " $STEPS " == *" cluster "* ]]; then
    if "$PY" -c "import distributed" > /dev/null 2>&1; then
        run_step cluster 90 15 40 "$PY" benchmarks/bench_convert.py --data "$DATA" --scheduler local:1 \
            --scheduler "local:$(nproc)" --repeats 1 "${QFLAG[@]}"
        # $OUT keeps its 8 files: the records are in convert.jsonl, the log goes into convert.log
        [ -f "$OUT/cluster.log" ] && { cat "$OUT/cluster.log" >> "$OUT/convert.log"; rm -f "$OUT/cluster.log"; }
    else
        note "SKIP cluster: $PY cannot import distributed (carry the dask and distributed wheels in $WHEELS)"
    fi
fi

# ------------------------------------------------------------------ 5. images (issue 17's 16-core row)
if [[ " $STEPS " == *" images "* ]]; then
    if "$PY" -c "import PIL, simplejpeg" > /dev/null 2>&1; then
        IMAGES_BEFORE=$( [ -f "$RECORDS/images.jsonl" ] && wc -l < "$RECORDS/images.jsonl" || echo 0 )
        # 2,000 generated JPEGs (--quick; the full 20,000 take minutes to make); decode rates on 1 and
        # $(nproc) threads, the DataLoader with $(nproc) workers, the loader with $(nproc) threads
        run_step images 100 10 60 "$PY" benchmarks/bench_images.py --data "$DATA" --quick --repeats 1 \
            --threads "$(nproc)" --sample 1000 --dl-batches 4
        # $OUT keeps its 8 files: the log and the new records go into facts.txt, the table into RESULTS.md
        [ -f "$OUT/images.log" ] && { cat "$OUT/images.log" >> "$FACTS"; rm -f "$OUT/images.log"; }
        { echo "== images.jsonl records appended by this run"
          tail -n +"$(( IMAGES_BEFORE + 1 ))" "$RECORDS/images.jsonl" 2>/dev/null; } >> "$FACTS"
    else
        note "SKIP images: $PY cannot import PIL and simplejpeg (carry the pillow and simplejpeg wheels in $WHEELS)"
    fi
fi

# RESULTS.md from every record (a step stopped by its timeout may not have regenerated it).
T=$(left)
[ "$T" -gt 30 ] && T=30
if [ "$T" -ge 5 ]; then
    timeout --foreground -k 5 "$T" "$PY" benchmarks/report.py >> "$FACTS" 2>&1 || note "report.py failed or timed out"
fi
kill "$COLLECTOR" 2>/dev/null
wait "$COLLECTOR" 2>/dev/null
collect
note "done in $(elapsed)s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
