#!/usr/bin/env bash
# The README's test command: installs what it needs on a fresh machine, then runs every check CI runs.
#   fmt, clippy (host and aarch64), rustdoc links, all workspace tests, and the SIMD tests for aarch64 under qemu.
# Environment: PROPTEST_CASES raises or lowers property-test case counts (default 256 on the host;
# the qemu run uses QEMU_PROPTEST_CASES, default 64).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# CI builds from scratch on a shared disk: no incremental state and no debug info (the test binaries
# link arrow and parquet statically; line tables alone doubled their size, and a full disk once
# crashed the linker). Panic messages still carry file and line.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_DEV_STRIP=debuginfo
fi

step() { printf '\n==> %s\n' "$*"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages: the aarch64 cross linker and qemu-user run the NEON tests; Prometheus ------
need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need_apt+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
# A real Prometheus server scrapes `quiver serve --metrics-listen` in tests/serve_metrics.rs.
command -v prometheus >/dev/null || need_apt+=(prometheus)
# `quiver bench` draws its charts' text with DejaVu Sans (tests/cli_bench.rs).
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Rust components and targets ---------------------------------------------------------------
installed=$(rustup component list --installed 2>/dev/null || true)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed" || rustup component add "$c"
done
rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu

# --- Python with pyarrow and numpy: pyarrow reads the engine's segment files, and pyarrow.flight ---
# --- drives `quiver serve` as Longbow's users do (numpy is the brute-force oracle) -----------------
PYENV=target/pyenv
# --- grpcio and opentelemetry-proto: the OTLP receiver the tracing test exports to; ---------------
# --- kubernetes-validate: the offline schema check of deploy/ (and PyYAML with it) ----------------
if ! "$PYENV/bin/python" -c 'import pyarrow.flight, numpy, grpc, opentelemetry.proto, kubernetes_validate, yaml' 2>/dev/null; then
  step "installing pyarrow, numpy, grpcio, opentelemetry-proto and kubernetes-validate into $PYENV"
  [ -x "$PYENV/bin/python" ] || python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check 'pyarrow==26.0.1' 'numpy==2.3.5' \
    'grpcio==1.85.4' 'opentelemetry-proto==1.45.2' 'protobuf==7.36.2' 'kubernetes-validate==1.37.0'
fi
export QUIVER_PYTHON="$PWD/$PYENV/bin/python" QUIVER_REQUIRE_PYARROW=1 QUIVER_REQUIRE_PROMETHEUS=1
# The disk-full test mounts a small tmpfs: CI runs as root, so a failed mount is a failure.
export QUIVER_REQUIRE_MOUNT=1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (x86_64, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo clippy (aarch64: the NEON kernels)"
cargo clippy -p quiver-simd --all-targets --locked --target aarch64-unknown-linux-gnu -- -D warnings

step "cargo doc (broken or private intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo test (workspace)"
cargo test --workspace --locked

step "engine example (quickstart)"
qs_dir=$(mktemp -d)
cargo run -q -p quiver-engine --locked --example quickstart "$qs_dir/db"
rm -rf "$qs_dir"

step "cargo test -p quiver-simd on aarch64 under qemu"
PROPTEST_CASES="${QEMU_PROPTEST_CASES:-64}" cargo test -p quiver-simd --locked --target aarch64-unknown-linux-gnu

step "all checks passed"
