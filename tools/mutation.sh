#!/usr/bin/env bash
# Mutation testing of tenantml/auth/ (mutmut 3; `make mutation`; not part of `make test` or CI).
#
# mutmut names mutants after the file's path below the work dir (a `src/` prefix is dropped), so the layer's
# package has to sit at src/tenantml for the names to match the imported module (tenantml.auth.verifier); a
# run from the repository root (layers/core/python/...) would record no hits. This script stages a src-style
# copy in .mutation/ (gitignored): src/tenantml plus the test tree and the folders the tests read, and runs
# mutmut there. mutmut copies it again into .mutation/mutants/ and puts mutants/src first on sys.path, so
# the mutated copy is imported instead of the editable install. One worker (--max-children 1) by default.
#
#   tools/mutation.sh                  # generate + run, then print the results
#   MUTATION_CHILDREN=2 tools/mutation.sh
#   tools/mutation.sh show <mutant>    # any other arguments are passed to mutmut as they are
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$ROOT/.mutation"
MUTMUT=("$(dirname "$PY")/mutmut")
"$PY" -c 'import mutmut' 2>/dev/null || { echo "mutmut is missing: pip install -e '.[mutation]'" >&2; exit 1; }

if [[ $# -gt 0 ]]; then  # mutmut results / show / browse ... on the last run
    cd "$WORK" && exec "${MUTMUT[@]}" "$@"
fi

rm -rf "$WORK"
mkdir -p "$WORK/src"
cp -r "$ROOT/layers/core/python/tenantml" "$WORK/src/tenantml"
cp -r "$ROOT/tests" "$ROOT/events" "$ROOT/functions" "$ROOT/gpu_endpoint" "$WORK/"
find "$WORK" -name __pycache__ -type d -prune -exec rm -rf {} +
cat > "$WORK/pyproject.toml" <<'TOML'
[tool.mutmut]
source_paths = ["src/"]
only_mutate = [
  "src/tenantml/auth/verifier.py",
  "src/tenantml/auth/jwks.py",
  "src/tenantml/auth/policy.py",
  "src/tenantml/auth/devkeys.py",
]
# Log calls are not mutated (their text and extra fields are not behaviour); exception and stderr message
# strings are mutated, and a survivor that only changes one is counted as excluded (see README, Tests).
do_not_mutate_patterns = ['\blogger\.(debug|info|warning|error|exception)\(']
also_copy = ["events/", "functions/", "gpu_endpoint/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [
  "tests/unit/test_auth_devkeys.py",
  "tests/unit/test_auth_jwks.py",
  "tests/unit/test_auth_policy.py",
  "tests/unit/test_auth_verifier.py",
  "tests/unit/test_tenancy_regressions.py",
]

[tool.pytest.ini_options]
pythonpath = ["."]
addopts = "-ra --strict-markers"
markers = ["e2e: the local platform over HTTP", "slow: builds real models"]
TOML

cd "$WORK"
start=$SECONDS
"${MUTMUT[@]}" run --max-children "${MUTATION_CHILDREN:-1}" || true
echo "mutation run: $((SECONDS - start)) s"
"${MUTMUT[@]}" results --all true | tee "$WORK/results.txt"
