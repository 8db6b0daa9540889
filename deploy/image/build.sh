#!/usr/bin/env bash
# Builds the ct-trace container image offline from this machine's files: the ct-trace binary,
# the shared libraries it and the netfilter tools load (their ldd closure), on an empty (`scratch`)
# base, with buildah. No registry, no base image, no container runtime.
#
#   deploy/image/build.sh [--binary PATH] [--tag NAME:TAG] [--oci-archive FILE]
#                         [--extra PATH]... [--extra-dir DIR]... [--no-netfilter-tools]
#                         [--rootfs DIR]
#
#   --binary PATH         the ct-trace to put in, built without the lab (default:
#                         target/image/release/ct-trace; build it first with
#                         `cargo build --release -p conntrack-user --no-default-features
#                         --target-dir target/image`). A ct-trace that has `ct-trace lab` is
#                         refused. A static build (RUSTFLAGS='-C target-feature=+crt-static'
#                         cargo build --release -p conntrack-user --no-default-features
#                         --target x86_64-unknown-linux-gnu) works too: it has no closure.
#   --tag NAME:TAG        image name (default: ct-trace:VERSION, VERSION from `ct-trace --version`)
#   --oci-archive FILE    also write the image as an OCI archive (for `ctr -n k8s.io images
#                         import FILE`, `skopeo copy oci-archive:FILE docker://REGISTRY/...`)
#   --extra PATH          another executable to include, at the same path, with its closure
#                         (repeatable; a symlink is kept as a symlink to its resolved file)
#   --extra-dir DIR       a directory of plugins to include whole, with their closure
#                         (repeatable: for what is loaded with dlopen, which ldd cannot see)
#   --no-netfilter-tools  leave out iptables-save, ip6tables-save and nft (and iptables'
#                         extensions): `ct-trace doctor` then reports the rulesets as unreadable
#   --rootfs DIR          only assemble the image's root filesystem in DIR (empty or absent);
#                         no buildah needed
#
# By default the image carries the netfilter tools ct-trace runs (`ct-trace doctor` reads the
# rulesets with iptables-save, ip6tables-save and nft): this machine's iptables-save is what the
# image runs, so a node whose kube-proxy writes iptables-legacy rules needs an image built where
# `iptables-save` is the legacy one (`update-alternatives --set iptables /usr/sbin/iptables-legacy`).
#
# The image: /usr/bin/ct-trace as entrypoint (arguments come from the DaemonSet), PATH set,
# empty /proc, /sys, /dev and /tmp as mount points, nothing else. Needs root (or `buildah unshare`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# The image's ct-trace has no lab; its own target directory keeps it apart from the default
# build's target/release/ct-trace, which has one.
image_build="cargo build --release -p conntrack-user --no-default-features --target-dir target/image"
binary="$repo/target/image/release/ct-trace"
tag=""
oci_archive=""
rootfs_only=""
netfilter_tools=1
extras=()
extra_dirs=()

die() {
    echo "build.sh: $*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --oci-archive) oci_archive=${2:?--oci-archive needs a file}; shift 2 ;;
    --extra) extras+=("${2:?--extra needs a path}"); shift 2 ;;
    --extra-dir) extra_dirs+=("${2:?--extra-dir needs a directory}"); shift 2 ;;
    --no-netfilter-tools) netfilter_tools=0; shift ;;
    --rootfs) rootfs_only=${2:?--rootfs needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -x $binary ]] || die "no ct-trace at $binary: build it first ($image_build) or give --binary"
version=$("$binary" --version | awk '{print $2}')
[[ -n $version ]] || die "$binary --version printed no version"
# The DaemonSet runs the image on every node: it carries no lab (raw sockets, TCP_REPAIR,
# namespaces and sysctls it changes). A ct-trace without one says so for `ct-trace lab`.
lab_says=$("$binary" lab 2>&1 || true)
if [[ $lab_says != *"this build has no lab"* ]]; then
    die "$binary has the lab (\`ct-trace lab\`): the image's ct-trace is built without it: $image_build"
fi
tag=${tag:-ct-trace:$version}

if ((netfilter_tools)); then
    for tool in iptables-save ip6tables-save nft; do
        path=$(command -v "$tool" || true)
        # PATH may lack /usr/sbin for a non-root shell.
        [[ -n $path ]] || path=$(PATH=/usr/sbin:/sbin command -v "$tool" || true)
        [[ -n $path ]] || die "$tool not found: install iptables and nftables, or pass --no-netfilter-tools"
        extras+=("$path")
    done
    # iptables loads its match and target extensions (libxt_conntrack.so, ...) with dlopen from
    # the directory it was built with; without them iptables-save cannot print a rule.
    for d in /usr/lib/x86_64-linux-gnu/xtables /usr/lib64/xtables /usr/lib/xtables; do
        if [[ -d $d ]]; then
            extra_dirs+=("$d")
            break
        fi
    done
fi

# --- the root filesystem --------------------------------------------------------------------
if [[ -n $rootfs_only ]]; then
    rootfs=$rootfs_only
    mkdir -p "$rootfs"
    [[ -z $(ls -A "$rootfs") ]] || die "$rootfs is not empty"
else
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/ct-trace-rootfs.XXXXXX")
fi
container=""
cleanup() {
    if [[ -n $container ]]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
    if [[ -z $rootfs_only ]]; then rm -rf "$rootfs"; fi
}
trap cleanup EXIT

# The host's merged-/usr links (/lib -> usr/lib, ...), so that every path ldd prints resolves
# inside the image the way it does here.
for d in bin sbin lib lib32 lib64 libx32; do
    if [[ -L /$d ]]; then
        target=$(readlink "/$d")
        [[ $target != /* ]] || die "/$d links to an absolute path ($target): not a merged-/usr layout this script knows"
        mkdir -p "$rootfs/$target"
        ln -s "$target" "$rootfs/$d"
    fi
done
mkdir -p "$rootfs"/{proc,sys,dev,tmp,usr/bin}
chmod 1777 "$rootfs/tmp"

# Copies one file to the same path in the rootfs, dereferenced (a library's soname link becomes
# the file it names).
put() {
    local src=$1 dst="$rootfs$1"
    [[ -e $dst ]] && return 0
    mkdir -p "$(dirname "$dst")"
    cp -L "$src" "$dst"
}

# Copies the shared libraries (and the dynamic loader) that files need, found by one ldd for all
# of them; a static file has none ("not a dynamic executable").
put_libs() {
    local lib
    while read -r lib; do
        [[ -n $lib ]] && put "$lib"
    done < <(ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && !/:$/ {print $1}' | sort -u)
}

cp -L "$binary" "$rootfs/usr/bin/ct-trace"
put_libs "$binary"

for e in "${extras[@]}"; do
    [[ -e $e ]] || die "--extra $e: no such file"
    real=$(readlink -f "$e")
    put "$real"
    put_libs "$real"
    if [[ $real != "$e" && ! -e $rootfs$e ]]; then
        mkdir -p "$(dirname "$rootfs$e")"
        ln -s "$real" "$rootfs$e"
    fi
done
for d in "${extra_dirs[@]}"; do
    [[ -d $d ]] || die "--extra-dir $d: no such directory"
    d=$(readlink -f "$d")
    mkdir -p "$rootfs$(dirname "$d")"
    cp -a "$d" "$rootfs$d"
    mapfile -d '' files < <(find "$d" -type f -print0)
    put_libs "${files[@]}"
done

# Name databases iptables and nft print protocol and port names from, when present.
for f in /etc/protocols /etc/services /etc/ethertypes; do
    if ((netfilter_tools)) && [[ -f $f ]]; then put "$f"; fi
done

if [[ -n $rootfs_only ]]; then
    echo "build.sh: root filesystem of $tag in $rootfs ($(du -sh "$rootfs" | cut -f1))"
    exit 0
fi

# --- the image ------------------------------------------------------------------------------
command -v buildah >/dev/null || die "buildah not found (apt-get install buildah), or use --rootfs DIR"
container=$(buildah from scratch)
buildah copy --quiet "$container" "$rootfs" / >/dev/null
buildah config \
    --entrypoint '["/usr/bin/ct-trace"]' \
    --env PATH=/usr/sbin:/usr/bin \
    --workingdir / \
    --os linux \
    --arch amd64 \
    --label org.opencontainers.image.title=ct-trace \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.description="conntrack INVALID verdicts and the TCP resets they cause" \
    "$container"
buildah commit --quiet --format oci --rm "$container" "$tag" >/dev/null
container=""
echo "build.sh: built $tag ($(du -sh "$rootfs" | cut -f1) of files)"

if [[ -n $oci_archive ]]; then
    rm -f "$oci_archive"
    buildah push --quiet "$tag" "oci-archive:$oci_archive:$tag"
    echo "build.sh: wrote $oci_archive"
fi
