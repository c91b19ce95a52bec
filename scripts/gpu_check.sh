#!/usr/bin/env bash
# The GPU check (docs/gpu.md): what only a GPU can show, in at most 8 minutes on one, ending in one table.
#
#   bash scripts/gpu_check.sh                 # on a machine with a GPU; exits 2 with one line where there is none
#   bash scripts/gpu_check.sh --cpu-dry-run   # every check on the CPU at tiny sizes: the script itself works
#
# Checks, in order (each bounded by what is left of the budget, so a slow one cannot sink the rest):
#   1. the device-parametrized tests on CUDA (tests/test_device_clean.py and the supernet and update-rule
#      tests that take the `device` fixture of tests/conftest.py);
#   2. a 2-round run of every configs/algorithm/*.yaml (debug=fast on synthetic data), its clients in
#      2 worker processes sharing the GPU (cluster=multiprocess), six runs at a time;
#   3. the batched supernet's local step against the op-by-op reference (scripts/bench_supernet.py):
#      the relative gap of their first-step losses, and the speed-up, in fp32 and bf16-mixed;
#   4. the paper setting's throughput (C=16, 8 layers, 3x32x32, batch 64), FedNAS and FedMetaNAS, samples/s;
#   5. a run with cluster.backend.compile=true (torch.compile of the clients' model copy).
# Logs and JSON go to $GPU_CHECK_DIR (default logs/gpu_check/<time>); the exit status is 0 when every
# check passed, 1 otherwise.
set -u -o pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --cpu-dry-run) MODE=cpu ;;
  "") ;;
  *) echo "usage: bash scripts/gpu_check.sh [--cpu-dry-run]" >&2; exit 64 ;;
esac
PYTHON=${PYTHON:-python}

if [ "$MODE" = gpu ]; then
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no GPU visible to torch (torch.cuda.is_available() is False); run it where one is, or use --cpu-dry-run"
    exit 2
  fi
  DEVICE=cuda ACCELERATOR=gpu TESTED=cuda SMALL=small PAPER=paper LANES=6 BUDGET=${GPU_CHECK_BUDGET:-470}
  RUN_LIMIT=150 LOSS_GAP_32=1e-3  # fp32 on CUDA: TF32 convolutions (PyTorch's default) on both paths
else
  DEVICE=cpu ACCELERATOR=cpu TESTED=off_cpu SMALL=tiny PAPER=tiny LANES=2 BUDGET=${GPU_CHECK_BUDGET:-3600}
  RUN_LIMIT=900 LOSS_GAP_32=1e-5
  export OMP_NUM_THREADS=1
fi
LOSS_GAP_BF16=5e-2  # bf16 autocast: about 3 significant digits per op
DIR=${GPU_CHECK_DIR:-logs/gpu_check/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$DIR/runs"
ROWS="$DIR/summary.tsv"
: > "$ROWS"
STARTED=$SECONDS

row() {  # check, PASS/FAIL/SKIP, number
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ROWS"
}

limit() {  # seconds a check may take: its own limit, or what is left of the budget if less (0: none left)
  local left=$((BUDGET - (SECONDS - STARTED)))
  if [ "$left" -lt 15 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# 1. device-parametrized tests ------------------------------------------------------------------------
check_tests() {
  local seconds log=$DIR/tests.log
  seconds=$(limit 150)
  [ "$seconds" -gt 0 ] || { row "device tests on $TESTED" SKIP "no time left"; return; }
  timeout "$seconds" "$PYTHON" -m pytest -p no:cacheprovider -k "$TESTED" tests/test_device_clean.py \
    tests/test_search_space.py tests/methods/test_fednas.py tests/methods/test_fedmetanas.py > "$log" 2>&1
  local rc=$? counts
  counts=$(grep -Eo '[0-9]+ (passed|failed|error|errors)' "$log" | paste -sd, -)
  if [ "$rc" -eq 0 ]; then row "device tests on $TESTED" PASS "$counts"
  elif [ "$rc" -eq 124 ]; then row "device tests on $TESTED" FAIL "timeout after ${seconds} s"
  else row "device tests on $TESTED" FAIL "${counts:-rc $rc} (tests.log)"; fi
}

# 2. two rounds of every method, clients in 2 workers ---------------------------------------------------
run_method() {  # method, seconds: one run's outcome written to runs/<method>.row
  local method=$1 seconds=$2 start out=$DIR/runs/$1
  start=$(now)
  # model=cnn: the fixed-network methods' network (the supernet methods ignore it); 3 layers: a normal cell
  # and two reduction cells, and room for FedPNAS' personal cell
  timeout "$seconds" "$PYTHON" src/search.py "algorithm=$method" debug=fast dataset=synthetic model=cnn \
    search_space.layers=3 cluster=multiprocess cluster.backend.workers=2 "trainer.accelerator=$ACCELERATOR" federation.rounds=2 \
    logger=none plots_every=null "hydra.run.dir=$out" > "$out.log" 2>&1
  local rc=$? took acc
  took=$(since "$start")
  acc=$(grep -Eo '^  global_test_acc: [0-9.]+' "$out.log" | awk '{print $2}')
  if [ "$rc" -eq 0 ] && [ -f "$out/FINISHED" ]; then
    printf '%s\t%s\t%s\n' "2 rounds, 2 workers: $method" PASS "$took s, acc ${acc:-?}" > "$out.row"
  elif [ "$rc" -eq 124 ]; then
    printf '%s\t%s\t%s\n' "2 rounds, 2 workers: $method" FAIL "timeout after $seconds s" > "$out.row"
  else
    printf '%s\t%s\t%s\n' "2 rounds, 2 workers: $method" FAIL "rc $rc (runs/$method.log)" > "$out.row"
  fi
}

check_methods() {
  local method seconds
  for method in $(ls configs/algorithm/*.yaml | xargs -n1 basename | sed 's/\.yaml$//'); do
    while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do wait -n; done
    seconds=$(limit "$RUN_LIMIT")
    if [ "$seconds" -gt 0 ]; then
      run_method "$method" "$seconds" &
    else
      printf '%s\t%s\t%s\n' "2 rounds, 2 workers: $method" SKIP "no time left" > "$DIR/runs/$method.row"
    fi
  done
  wait
  cat "$DIR"/runs/*.row >> "$ROWS"
}

# 3, 4. the supernet step: against the op-by-op reference, and the paper setting's throughput ------------
bench() {  # name, own limit, settings, precision, methods...: bench_supernet.py's rows to <name>.json
  local name=$1 own=$2 settings=$3 precision=$4 seconds
  shift 4
  seconds=$(limit "$own")
  [ "$seconds" -gt 0 ] || return 124
  timeout "$seconds" "$PYTHON" scripts/bench_supernet.py --device "$DEVICE" --settings "$settings" \
    --precision "$precision" --methods "$@" --repeats 2 --plain-threads --no-memory \
    --results "$DIR/$name.json" > "$DIR/$name.log" 2>&1
}

bench_rows() {  # name, kind (reference|throughput), precision, tolerance: the table's rows from <name>.json
  "$PYTHON" - "$DIR/$1.json" "$2" "$3" "$4" <<'EOF'
import json, sys

path, kind, precision, tolerance = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
for r in json.load(open(path))["results"]:
    if kind == "reference":
        ok = r["loss_gap"] <= tolerance
        print(f"supernet vs op-by-op reference, {r['setting']} {r['method']} {precision}\t{'PASS' if ok else 'FAIL'}\t"
              f"loss gap {r['loss_gap']:.1e} (max {tolerance:g}), {r['speedup']:.2f}x faster")
    else:
        print(f"throughput {r['setting']} (C={r['C']}, {r['layers']} layers, {r['image_size']}px, batch {r['batch']}) "
              f"{r['method']} {precision}\tPASS\t{r['fast_samples_per_second']:.1f} samples/s "
              f"(reference {r['reference_samples_per_second']:.1f})")
EOF
}

check_bench() {  # name, kind, own limit, settings, precision, tolerance, methods...
  local name=$1 kind=$2 own=$3 settings=$4 precision=$5 tolerance=$6
  shift 6
  bench "$name" "$own" "$settings" "$precision" "$@"
  local rc=$?
  if [ "$rc" -eq 0 ] && bench_rows "$name" "$kind" "$precision" "$tolerance" >> "$ROWS"; then return; fi
  local why="rc $rc ($name.log)"
  [ "$rc" -eq 124 ] && why="timeout or no time left"
  row "$kind $settings $precision ($*)" FAIL "$why"
}

# 5. torch.compile of the clients' model copy -------------------------------------------------------------
check_compile() {
  local seconds start out=$DIR/runs/compile
  seconds=$(limit 150)
  [ "$seconds" -gt 0 ] || { row "2 rounds, cluster.backend.compile=true: fednas" SKIP "no time left"; return; }
  start=$(now)
  timeout "$seconds" "$PYTHON" src/search.py algorithm=fednas debug=fast dataset=synthetic cluster=local \
    cluster.backend.compile=true "trainer.accelerator=$ACCELERATOR" federation.rounds=2 logger=none \
    plots_every=null "hydra.run.dir=$out" > "$out.log" 2>&1
  local rc=$?
  if [ "$rc" -eq 0 ] && [ -f "$out/FINISHED" ]; then
    row "2 rounds, cluster.backend.compile=true: fednas" PASS "$(since "$start") s"
  elif [ "$rc" -eq 124 ]; then row "2 rounds, cluster.backend.compile=true: fednas" FAIL "timeout after $seconds s"
  else row "2 rounds, cluster.backend.compile=true: fednas" FAIL "rc $rc (runs/compile.log)"; fi
}

echo "gpu_check ($MODE): logs in $DIR"
check_tests
check_methods
check_bench reference_32 reference 90 "$SMALL" 32-true "$LOSS_GAP_32" fednas fedmetanas feddsnas
check_bench reference_bf16 reference 90 "$SMALL" bf16-mixed "$LOSS_GAP_BF16" fednas fedmetanas feddsnas
check_bench paper_32 throughput 75 "$PAPER" 32-true 0 fednas fedmetanas
check_bench paper_bf16 throughput 75 "$PAPER" bf16-mixed 0 fednas fedmetanas
check_compile

echo
if [ "$MODE" = gpu ]; then
  "$PYTHON" -c 'import torch; print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")'
else
  echo "CPU dry run (--cpu-dry-run): tiny sizes, the emulated device (off_cpu) for the device tests"
fi
awk -F'\t' 'NR == FNR { if (length($1) > w) w = length($1); next }
             FNR == 1 { printf "%-" w "s  %-6s %s\n", "check", "result", "number" }
             { printf "%-" w "s  %-6s %s\n", $1, $2, $3 }' "$ROWS" "$ROWS" | tee "$DIR/summary.txt"
echo "total $((SECONDS - STARTED)) s"
awk -F'\t' '$2 != "PASS" { failed = 1 } END { exit failed }' "$ROWS"
