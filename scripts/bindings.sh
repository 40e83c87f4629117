#!/usr/bin/env bash
# The bindings of the client core (sdk-bindings) for Kotlin, Swift and Python.
#
#   scripts/bindings.sh generate      Kotlin, Swift and Python sources and the host's native
#                                     library, in target/bindings/ (RELEASE=1 for a release build)
#   scripts/bindings.sh swift-check   the checked-in Swift package sources match the generator's
#   scripts/bindings.sh swift-update  rewrite them (after changing the bindings' API)
#   scripts/bindings.sh python-test   build the wheel with maturin, install it in a venv, run pytest
#   scripts/bindings.sh kotlin-test   build the Kotlin library with Maven, run its JUnit tests
#   scripts/bindings.sh test          those three, and that the README's Kotlin and Python
#                                     examples are the compiled / compilable ones (what
#                                     scripts/test.sh runs)
#
# Every tool comes from a registry: maturin and pytest from PyPI into target/py-venv, the Kotlin
# compiler, kotlinx-coroutines, JNA and JUnit from Maven Central through Maven. The tests run
# the workspace's im-server as a real process.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target="${CARGO_TARGET_DIR:-$root/target}"
profile_dir=debug
profile_flag=()
if [[ "${RELEASE:-}" == 1 ]]; then
    profile_dir=release
    profile_flag=(--release)
fi
out="$target/bindings"

build_native() {
    cargo build --locked "${profile_flag[@]}" -p sdk-bindings -p uniffi-bindgen
}

library() {
    echo "$target/$profile_dir/libimsdk.so"
}

generate() {
    build_native
    rm -rf "$out"/{kotlin,swift,python}
    mkdir -p "$out/lib"
    cp "$(library)" "$out/lib/"
    for language in kotlin swift python; do
        # The crate's uniffi.toml (package and module names) is read from its directory.
        (cd sdk-bindings && "$target/$profile_dir/uniffi-bindgen" generate --no-format \
            --language "$language" --out-dir "$out/$language" "$(library)" >/dev/null)
    done
    echo "generated: $out/{kotlin,swift,python}, native library: $out/lib/libimsdk.so"
}

# The Swift package (sdk-bindings/swift) carries the generated sources, as Swift packages are
# consumed from git; CI checks they are what the generator makes of the current API.
# The C header and module map go into the XCFramework built on a Mac (README, "Mobile builds").
swift_package_files() {
    local from="$1" to="$2"
    mkdir -p "$to/Sources/IMSDK" "$to/ffi"
    cp "$from/IMSDK.swift" "$to/Sources/IMSDK/IMSDK.swift"
    cp "$from/imsdkFFI.h" "$to/ffi/imsdkFFI.h"
    cp "$from/imsdkFFI.modulemap" "$to/ffi/module.modulemap"
}

swift_check() {
    generate
    local fresh="$target/bindings/swift-package"
    rm -rf "$fresh"
    swift_package_files "$out/swift" "$fresh"
    if ! diff -ru "$root/sdk-bindings/swift/Sources" "$fresh/Sources" \
        || ! diff -ru "$root/sdk-bindings/swift/ffi" "$fresh/ffi"; then
        echo "sdk-bindings/swift is stale: run scripts/bindings.sh swift-update" >&2
        exit 1
    fi
    echo "swift: the checked-in sources match the generator's"
}

python_test() {
    local venv="$target/py-venv"
    if [[ ! -x "$venv/bin/maturin" || ! -x "$venv/bin/pytest" ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9,<2" pytest
    fi
    cargo build --locked -p im-server
    rm -rf "$target/wheels"
    (cd sdk-bindings/python && "$venv/bin/maturin" build --locked --out "$target/wheels" >/dev/null)
    "$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "$target"/wheels/imsdk-*.whl
    # From outside the source tree, so the test imports the installed wheel.
    (cd sdk-bindings/python/tests && IMSDK_TEST_SERVER="$target/debug/im-server" \
        "$venv/bin/pytest" -q -p no:cacheprovider .)
}

# The README's examples stay true: its Kotlin block is the file compiled with the Kotlin tests,
# and its Python block must at least compile.
readme_check() {
    python3 - <<'PY'
import pathlib, re, sys
readme = pathlib.Path("README.md").read_text()
def block(language, start):
    match = re.search("```" + language + "\n(" + re.escape(start) + ".*?)```\n", readme, re.S)
    if not match:
        sys.exit(f"README.md has no {language} example starting with {start!r}")
    return match.group(1)
kotlin = block("kotlin", "import im.sdk.*")
compiled = pathlib.Path("sdk-bindings/kotlin/src/test/kotlin/im/sdk/ReadmeExample.kt").read_text()
if compiled.split("package im.sdk.readme\n\n", 1)[-1] != kotlin:
    sys.exit("README.md's Kotlin example differs from sdk-bindings/kotlin/src/test/kotlin/im/sdk/ReadmeExample.kt")
compile(block("python", "import asyncio"), "README.md (Python example)", "exec")
print("readme: the Kotlin example is the compiled one, the Python example compiles")
PY
}

kotlin_test() {
    generate
    cargo build --locked -p im-server
    (cd sdk-bindings/kotlin && mvn --batch-mode --no-transfer-progress \
        -Dimsdk.generated="$out/kotlin" -Dimsdk.library="$out/lib" \
        -Dimsdk.server="$target/debug/im-server" verify)
}

case "${1:-generate}" in
    generate) generate ;;
    swift-check) swift_check ;;
    swift-update)
        generate
        rm -rf sdk-bindings/swift/Sources sdk-bindings/swift/ffi
        swift_package_files "$out/swift" sdk-bindings/swift ;;
    python-test) python_test ;;
    kotlin-test) kotlin_test ;;
    test) readme_check && swift_check && python_test && kotlin_test ;;
    *) echo "usage: $0 generate|swift-check|swift-update|python-test|kotlin-test|test" >&2; exit 2 ;;
esac
