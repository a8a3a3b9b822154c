#!/usr/bin/env bash
# Regenerate the R reference corpus and install it in the repository.
#   tools/reference/regenerate.sh [WORKDIR]     (needs Rscript with the packages listed in make_reference.R)
# 1. stage WORKDIR (default: a fresh temporary folder) with the memoe_sim2 generator, truth and data;
# 2. run make_reference.R there (about 1.5 min);
# 3. validate the output; 4. copy case JSONs + index.json to tests/data, dataset CSVs to the package.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work/memoe_sim2"
cp "$root"/tests/data/memoe_sim2/generate.py "$root"/tests/data/memoe_sim2/memoe_sim2_truth.json "$work/memoe_sim2/"
cp "$root"/src/memoe/datasets/data/memoe_sim2.csv "$work/memoe_sim2/"
Rscript "$root/tools/reference/make_reference.R" "$work"
python "$root/tools/reference/validate.py" "$work" --data-dir "$work"
cp "$work"/*.json "$root/tests/data/"
cp "$work"/memoe_sim2/*.json "$root/tests/data/memoe_sim2/"
for f in "$work"/*.csv; do cp "$f" "$root/src/memoe/datasets/data/"; done
cp "$work/memoe_sim2/memoe_sim2.csv" "$root/src/memoe/datasets/data/"
echo "installed from $work; now run: python tools/reference/validate.py && python -m pytest -q tests/golden"
