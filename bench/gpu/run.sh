#!/usr/bin/env bash
# One command on a lent GPU machine (bare: torch, transformers and triton present; no network; no
# polars/pydantic): installs the wheels kit.sh put in .whl/, runs the CUDA tests (pytest -m cuda),
# then bench_lm_scoring, bench_train and bench_generate at the H100 shapes, and writes
# DIR/results.json and DIR/results.md (plus DIR/run.log and DIR/pytest-cuda.xml) inside --budget.
#
#   bash bench/gpu/run.sh --out DIR              # on the GPU machine (send .whl along: carry [".whl"])
#   bash bench/gpu/run.sh --out DIR --dry-run    # anywhere, on CPU with tiny shapes (CI runs this)
#
# Options: --kit DIR (wheel folder, default .whl), --model M (a model folder or built-in name instead
# of the stand-in), --budget S (seconds for everything, default 570), --only STEPS (comma list of
# cuda_tests,lm_scoring,train,generate: e.g. a second call for a step the first ran out of time on).
# Each step gets what is left of the budget (capped per step); a step that fails or runs out of time
# is recorded and the next runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT="" DRY=0 KIT=.whl KIT_GIVEN=0 MODEL="" BUDGET=570 ONLY=cuda_tests,lm_scoring,train,generate
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --kit) KIT=$2; KIT_GIVEN=1; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for name in ${ONLY//,/ }; do
  case "$name" in
    cuda_tests|lm_scoring|train|generate) ;;
    *) echo "run.sh: --only takes cuda_tests,lm_scoring,train,generate (not $name)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash bench/gpu/run.sh --out DIR [--dry-run] [--kit DIR] [--model M] [--budget S]" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/datamill-gpu.XXXXXX")
START=$(date +%s)
LOG=$OUT/run.log
: >"$LOG"
: >"$WORK/steps.tsv"
rm -f "$OUT/results.json" "$OUT/results.md" "$OUT/pytest-cuda.xml"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the GPU machine has no network: never wait on the hub

say() { echo "[run.sh +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP_SECONDS COMMAND...: run with a timeout of min(CAP, budget left - 20 s for the report)
step() {
  local name=$1 cap=$2 limit t0 rc status
  shift 2
  if [[ ",$ONLY," != *",$name,"* ]]; then
    printf '%s\tnot selected (--only)\t0\n' "$name" >>"$WORK/steps.tsv"
    return
  fi
  limit=$(($(left) - 20))
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt 10 ]; then
    say "$name: skipped, the budget is spent"
    printf '%s\tskipped (budget spent)\t0\n' "$name" >>"$WORK/steps.tsv"
    return
  fi
  say "$name: starting (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  say "$name: $status"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$WORK/steps.tsv"
}

# 1. the wheels (a dry run installs them only from a --kit it is given: .whl/ is for Python 3.12)
if [ "$DRY" = 0 ] || [ "$KIT_GIVEN" = 1 ]; then
  if ls "$KIT"/*.whl >/dev/null 2>&1; then
    say "installing $(ls "$KIT"/*.whl | wc -l) wheels from $KIT"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$KIT"/*.whl >>"$LOG" 2>&1 \
      || say "WARNING: the wheel install failed (see above); going on with what the image has"
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  else
    say "WARNING: no wheels in $KIT (build them with bash bench/gpu/kit.sh where pip reaches PyPI, then carry $KIT)"
  fi
fi

# 2. this checkout as the datamill package, ahead of any installed copy
"$PY" bench/gpu/runner.py site "$WORK/dm" >>"$LOG" 2>&1 || { say "cannot link the checkout"; exit 1; }
export PYTHONPATH=$WORK/dm${PYTHONPATH:+:$PYTHONPATH}

# 3. the benchmark model and the environment
TOKENIZER=smollm2-135m
[ -d "$KIT/smollm2-tokenizer" ] && TOKENIZER=$KIT/smollm2-tokenizer
MODEL_ARGS=(--out "$WORK/model" --tokenizer "$TOKENIZER" --env "$WORK/env.json")
[ "$DRY" = 1 ] && MODEL_ARGS+=(--tiny)
[ -n "$MODEL" ] && MODEL_ARGS+=(--model "$MODEL")
say "building the benchmark model"
if ! MODEL_DIR=$("$PY" bench/gpu/runner.py model "${MODEL_ARGS[@]}" 2>>"$LOG"); then
  say "cannot build the benchmark model (see run.log)"
  exit 1
fi
MODEL_DIR=$(echo "$MODEL_DIR" | tail -n 1)
say "model: $MODEL_DIR; $(tr -d '\n' <"$WORK/env.json")"
export DATAMILL_TEST_TOKENIZER=$MODEL_DIR

# 4. the steps: CUDA tests, LM scoring, training, generation
STEP=("$PY" bench/gpu/runner.py step)
CUDA_TEST_FILES=$(grep -l "pytest.mark.cuda" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
step cuda_tests 120 "${STEP[@]}" "$WORK/audit-cuda_tests.json" -m pytest -q -rA -m cuda -p no:cacheprovider \
  --junitxml="$OUT/pytest-cuda.xml" $CUDA_TEST_FILES
if [ "$DRY" = 1 ]; then
  SCORING=(--docs 8 --max-tokens 64 --batch-rows 4 --batch-tokens 256 --device cpu)
  TRAIN=(--device cpu --preset llama-20m --seq-len 64 --micro-batch 2 --steps 2 --baseline-steps 1 --baselines eager
         --overrides '{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}')
  GENERATE=(--batch-sizes 2 --max-new-tokens 4 --batches 1)
else
  SCORING=(--docs 2000)
  TRAIN=()  # the GPU defaults: llama-135m, seq 2048 × 16, bf16, flex, compiled; HF eager and HF+compile
  GENERATE=(--batch-sizes 64,256 --max-new-tokens 128 --batches 2)
fi
# liger only if its kernel runs here: a wheel that does not fit this torch/triton must not cost the row
if grep -q '"liger_runs": true' "$WORK/env.json"; then TRAIN+=(--liger on); else TRAIN+=(--liger off); fi
say "training with liger: ${TRAIN[*]: -1}"
step lm_scoring 60 "${STEP[@]}" "$WORK/audit-lm_scoring.json" bench/bench_lm_scoring.py --model "$MODEL_DIR" \
  --json "$WORK/lm_scoring.json" "${SCORING[@]}"
step train 240 "${STEP[@]}" "$WORK/audit-train.json" bench/bench_train.py --tokenizer "$MODEL_DIR" \
  --json "$WORK/train.json" "${TRAIN[@]}"
step generate 600 "${STEP[@]}" "$WORK/audit-generate.json" bench/bench_generate.py --model "$MODEL_DIR" \
  --json "$WORK/generate.json" "${GENERATE[@]}"

# 5. the report
REPORT=(--work "$WORK" --out "$OUT")
[ "$DRY" = 1 ] && REPORT+=(--dry-run)
if ! "$PY" bench/gpu/runner.py report "${REPORT[@]}" 2>>"$LOG" | tee -a "$LOG"; then
  say "the report failed (see run.log)"
  exit 1
fi
say "done: $OUT/results.md and $OUT/results.json"
FAILED=$(cut -f2 "$WORK/steps.tsv" | grep -v '^not selected' | grep -vc '^ok$')
rm -rf "$WORK"
[ "$FAILED" = 0 ] || { say "$FAILED step(s) did not finish ok"; exit 1; }
