#!/usr/bin/env bash
# Builds the relay's container image: a static musl binary in a FROM-scratch
# image (relay/Containerfile). Installs what it needs when missing (podman,
# buildah, runc and musl-tools with apt-get; the musl Rust target with
# rustup), so it works on a fresh machine. Idempotent.
#
# Usage: relay/container/build.sh [IMAGE]       (default mycel-relay:latest)
# Env:   CARGO_TARGET_DIR (default <repo>/target), SKIP_INSTALL=1
set -euo pipefail

image="${1:-mycel-relay:latest}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
triple=x86_64-unknown-linux-musl

need_apt=()
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
if [ "${#need_apt[@]}" -gt 0 ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
  echo "build.sh: installing ${need_apt[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$triple"; then
  rustup target add "$triple"
fi

# Pure Rust dependencies: rustc's self-contained musl linking needs no C
# toolchain; musl-gcc is there for any crate that compiles C.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
# The image needs no debug info: a stripped binary is a few MB, not ~27.
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
cargo build --release -p mycel-relay --bin mycel-relay --target "$triple" \
  --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir"
bin="$target_dir/$triple/release/mycel-relay"
if file "$bin" 2>/dev/null | grep -q "dynamically linked"; then
  echo "build.sh: $bin is not static" >&2
  exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/mycel-relay"
cp "$repo/relay/Containerfile" "$ctx/Containerfile"
# Docker format: OCI images drop HEALTHCHECK.
podman build --format docker -t "$image" -f "$ctx/Containerfile" "$ctx"
echo "build.sh: built $image" >&2
