#!/usr/bin/env bash
# A lavapipe with cooperative matrices (Mesa 26.1 from Debian trixie-backports, with trixie's
# glibc and LLVM beside it, nothing installed system-wide), to run the matrix-core GEMM
# (`--matrix-cores`, shaders/gemm_coop.wgsl) on a machine without a GPU. Debian 12's lavapipe
# (Mesa 22.3, what CI runs) and 25.0 have none.
#
#   bash scripts/lavapipe-coop.sh setup            # downloads ~60 MB of .debs into $DIR
#   bash scripts/lavapipe-coop.sh run CMD...       # runs CMD on that lavapipe
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="bash $PWD/scripts/lavapipe-coop.sh run" \
#       cargo test -p t2v-kernels --test gemm matrix_core     # a test binary through it
#
# DIR is $LAVAPIPE_COOP_DIR, else /tmp/lavapipe-coop. CMD runs under trixie's dynamic loader
# (`ld-linux --library-path`), so only binaries started directly get that lavapipe: a test's
# child processes (the CLI tests, which run the t2v-turbo binary) find no adapter at all
# there (they inherit VK_ICD_FILENAMES, not the loader) — leave those tests out.
set -euo pipefail
DIR=${LAVAPIPE_COOP_DIR:-/tmp/lavapipe-coop}
MIRROR=http://deb.debian.org/debian
case "${1:-}" in
setup)
    mkdir -p "$DIR/debs" "$DIR/root"
    cd "$DIR"
    curl -fsS -o trixie.xz "$MIRROR/dists/trixie/main/binary-amd64/Packages.xz"
    curl -fsS -o backports.xz "$MIRROR/dists/trixie-backports/main/binary-amd64/Packages.xz"
    # mesa-vulkan-drivers from backports, the Vulkan loader, and their dependencies from
    # trixie (first alternative of each)
    python3 - <<'PY' > files.txt
import lzma, re
def parse(path):
    out = {}
    for block in lzma.open(path, 'rt').read().split('\n\n'):
        fields = dict(m.groups() for m in re.finditer(r'^([A-Za-z-]+): (.*)$', block, re.M))
        if 'Package' in fields:
            out[fields['Package']] = fields
    return out
trixie, backports = parse('trixie.xz'), parse('backports.xz')
todo, seen = ['mesa-vulkan-drivers', 'libvulkan1'], set()
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    pkg = backports[name] if name == 'mesa-vulkan-drivers' else trixie[name]
    print(pkg['Filename'])
    for dep in filter(None, (d.strip() for d in pkg.get('Depends', '').split(','))):
        todo.append(dep.split('|')[0].split()[0].split(':')[0])
PY
    while read -r f; do
        deb=debs/$(basename "$f")
        [ -s "$deb" ] || curl -fsS -o "$deb" "$MIRROR/$f"
        dpkg -x "$deb" root
    done < files.txt
    printf '{"ICD": {"api_version": "1.4.0", "library_path": "%s"}, "file_format_version": "1.0.1"}\n' \
        "$DIR/root/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" > lvp.json
    echo "lavapipe with cooperative matrices in $DIR ($(wc -l < files.txt) packages)"
    ;;
run)
    shift
    [ -e "$DIR/lvp.json" ] || { echo "run \`$0 setup\` first" >&2; exit 2; }
    mkdir -p "${XDG_RUNTIME_DIR:-/tmp/xdg}"
    L=$DIR/root/usr/lib/x86_64-linux-gnu:$DIR/root/lib/x86_64-linux-gnu
    exec env VK_ICD_FILENAMES="$DIR/lvp.json" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg}" \
        "$DIR/root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$L" "$@"
    ;;
*)
    sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
