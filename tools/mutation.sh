#!/usr/bin/env bash
# Mutation testing (mutmut 3; `make mutation`; not part of `make test` or CI), per target layer set:
#
#   MUTATION_TARGET=auth         tenantml/auth/{verifier,jwks,policy,devkeys}.py (the default)
#   MUTATION_TARGET=api-serving  tenantml/api/*.py (not __init__) and tenantml/serving/{service,cache,runtime}.py
#
# mutmut names mutants after the file's path below the work dir (a `src/` prefix is dropped), so the layer's
# package has to sit at src/tenantml for the names to match the imported module (tenantml.auth.verifier); a
# run from the repository root (layers/core/python/...) would record no hits. This script stages a src-style
# copy in .mutation/<target>/ (gitignored; one folder per target, so runs do not clobber each other):
# src/tenantml plus the test tree and the folders the tests read, and runs mutmut there. mutmut copies it
# again into .mutation/<target>/mutants/ and puts mutants/src first on sys.path, so the mutated copy is
# imported instead of the editable install. One worker (--max-children 1) by default; MUTATION_CHILDREN=2
# uses both cores.
#
#   tools/mutation.sh                                  # auth: generate + run, then print the results
#   MUTATION_TARGET=api-serving tools/mutation.sh      # api/ + serving/{service,cache,runtime}.py
#   MUTATION_CHILDREN=2 tools/mutation.sh
#   MUTATION_TARGET=api-serving tools/mutation.sh report           # the score (tools/mutation_report.py)
#   MUTATION_TARGET=api-serving tools/mutation.sh results          # any other arguments go to mutmut as
#   MUTATION_TARGET=api-serving tools/mutation.sh show <mutant>    # they are, on that target's last run
#   MUTATION_TARGET=api-serving tools/mutation.sh run 'tenantml.api.*'   # re-run some mutants in place
#
# Each target's test selection is the unit tests plus the fast integration tests (moto, in-process) that
# exercise its modules: auth ~630 tests, api-serving ~720. Measured on 2026-12-01 with 2 workers on the 2-core
# machine: auth's 1,470 mutants in 29 min, api-serving's 3,013 in 46 min (the mutants of functions every test
# reaches, such as read_body, caller_from_event or build_service, run last and run most of the selection each).
# To re-test survivors after adding tests, `run <names>` re-stages the test tree, has mutmut collect again
# which tests reach which mutant, and re-runs the named mutants; the other results are kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TARGET="${MUTATION_TARGET:-auth}"
WORK="$ROOT/.mutation/$TARGET"
MUTMUT=("$(dirname "$PY")/mutmut")
"$PY" -c 'import mutmut' 2>/dev/null || { echo "mutmut is missing: pip install -e '.[mutation]'" >&2; exit 1; }

case "$TARGET" in
    auth)
        ONLY_MUTATE='
  "src/tenantml/auth/verifier.py",
  "src/tenantml/auth/jwks.py",
  "src/tenantml/auth/policy.py",
  "src/tenantml/auth/devkeys.py",'
        TESTS='
  "tests/unit/test_auth_devkeys.py",
  "tests/unit/test_auth_jwks.py",
  "tests/unit/test_auth_policy.py",
  "tests/unit/test_auth_verifier.py",
  "tests/unit/test_jwt_attacks.py",
  "tests/unit/test_tenancy_regressions.py",
  "tests/integration/test_authorizer_handler.py",
  "tests/integration/test_jwks_faults.py",'
        ;;
    api-serving)
        ONLY_MUTATE='
  "src/tenantml/api/body.py",
  "src/tenantml/api/context.py",
  "src/tenantml/api/errors.py",
  "src/tenantml/api/flavours.py",
  "src/tenantml/api/inference_routes.py",
  "src/tenantml/api/openapi.py",
  "src/tenantml/api/registry_routes.py",
  "src/tenantml/serving/service.py",
  "src/tenantml/serving/cache.py",
  "src/tenantml/serving/runtime.py",'
        TESTS='
  "tests/unit/test_service.py",
  "tests/unit/test_registry_routes.py",
  "tests/unit/test_tenancy_regressions.py",
  "tests/unit/test_registry_cache.py",
  "tests/unit/test_oip.py",
  "tests/unit/test_binary_tensors.py",
  "tests/unit/test_rollout_serving.py",
  "tests/unit/test_capture_sink.py",
  "tests/unit/test_feedback.py",
  "tests/unit/test_mutants_api.py",
  "tests/unit/test_mutants_serving.py",
  "tests/integration/test_inference_handler.py",
  "tests/integration/test_registry_handler.py",
  "tests/integration/test_feedback_route.py",
  "tests/integration/test_registry_registration.py",
  "tests/integration/test_token_expiry.py",
  "tests/unit/test_apigw_http.py",
  "tests/unit/test_openapi.py",
  "tests/integration/test_event_shapes.py",
  "tests/unit/test_integrity_fallback.py",
  "tests/unit/test_fuzz_regressions.py",
  "tests/integration/test_gpu_async.py",'
        ;;
    *)
        echo "unknown MUTATION_TARGET '$TARGET' (auth, api-serving)" >&2
        exit 2
        ;;
esac

# mutmut runs pytest in-process, several times, under its own output capture: the Powertools logger's
# handler keeps the stdout it was created with (the first run's, closed since), and a test that swaps the
# handler's stream (log_lines in tests/integration) then fails on flushing it. The staged copy (only)
# points such handlers back at the live stdout before each test.
stage_tests() {  # copy the test tree to $1/tests, with that hook added to its conftest
    rm -rf "$1/tests"
    cp -r "$ROOT/tests" "$1/tests"
    find "$1/tests" -name __pycache__ -type d -prune -exec rm -rf {} +
    cat >> "$1/tests/conftest.py" <<'PY'


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # added by tools/mutation.sh to the staged copy only
    import logging

    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(lg, "handlers", []):
            stream = getattr(h, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                h.stream = sys.stdout


# Added by tools/mutation.sh to the staged copy only: mutmut's fork server imports this conftest once (its
# warm-up collects the tests) and forks every mutant's run from it, so what is imported here is imported
# once per run instead of once per mutant: scikit-learn and skl2onnx, which the tiny tabular test model is
# trained and exported with, take ~6 s to import, more than most mutants' tests.
for _module in ("sklearn.linear_model", "skl2onnx", "onnx", "moto.sts.models", "hypothesis"):
    try:
        __import__(_module)
    except ImportError:
        pass


def pytest_collection_modifyitems(items):  # added by tools/mutation.sh to the staged copy only
    # mutmut passes a mutant's tests as a set, so their modules arrive interleaved and each module's
    # fixtures (moto, provisioned tables, built models) would be set up again at every switch; grouped by
    # module, unit tests first (cheap, and they kill most mutants before the integration tests start).
    order = {}
    for item in items:
        order.setdefault(item.nodeid.split("::")[0], len(order))
    items.sort(key=lambda it: ("/integration/" in it.nodeid, order[it.nodeid.split("::")[0]]))
PY
}

if [[ ${1:-} == report ]]; then  # the score, with message-only and equivalent survivors set apart
    cd "$WORK" && exec "$PY" "$ROOT/tools/mutation_report.py"
fi
if [[ $# -gt 0 ]]; then  # mutmut results / show / browse / run <names> ... on this target's last run
    if [[ $1 == run && -d "$WORK/mutants" ]]; then  # re-running: pick up new or changed tests
        stage_tests "$WORK"
        stage_tests "$WORK/mutants"
        # which tests reach which mutant is collected again (the new tests' too); results are kept
        rm -f "$WORK/mutants/mutmut-stats.json"
    fi
    cd "$WORK" && exec "${MUTMUT[@]}" "$@"
fi

rm -rf "$WORK"
mkdir -p "$WORK/src"
cp -r "$ROOT/layers/core/python/tenantml" "$WORK/src/tenantml"
cp -r "$ROOT/events" "$ROOT/functions" "$ROOT/gpu_endpoint" "$ROOT/docs" "$WORK/"
find "$WORK" -name __pycache__ -type d -prune -exec rm -rf {} +
stage_tests "$WORK"
cat > "$WORK/pyproject.toml" <<TOML
[tool.mutmut]
source_paths = ["src/"]
only_mutate = [$ONLY_MUTATE
]
# Log calls are not mutated (their text and extra fields are not behaviour); exception and stderr message
# strings are mutated, and a survivor that only changes one is counted as excluded (see README, Tests).
do_not_mutate_patterns = ['\blogger\.(debug|info|warning|error|exception)\(']
also_copy = ["events/", "functions/", "gpu_endpoint/", "docs/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [$TESTS
]

[tool.pytest.ini_options]
pythonpath = ["."]
addopts = "-ra --strict-markers"
markers = ["e2e: the local platform over HTTP", "slow: builds real models"]
TOML

cd "$WORK"
start=$SECONDS
"${MUTMUT[@]}" run --max-children "${MUTATION_CHILDREN:-1}" || true
echo "mutation run ($TARGET): $((SECONDS - start)) s"
"${MUTMUT[@]}" results --all true > "$WORK/results.txt"
"$PY" "$ROOT/tools/mutation_report.py" | tee "$WORK/report.txt"
