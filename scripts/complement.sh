#!/usr/bin/env bash
# Builds the Myelin Complement image and runs Complement against it. See docs/complement.md.
set -euo pipefail

# MYELIN_COMPLEMENT_IMAGE and MYELIN_COMPLEMENT_RESULTS let several runs share a machine.
readonly IMAGE=${MYELIN_COMPLEMENT_IMAGE:-myelin-complement:latest}

usage() {
	cat <<'EOF'
usage: scripts/complement.sh COMPLEMENT_DIR [go test args...]
       scripts/complement.sh --image-only

Builds a static myelin binary, wraps it in the Docker image myelin-complement:latest
(FROM scratch; build/complement/), then runs Complement's tests from the checkout
COMPLEMENT_DIR against it.

go test args are passed after the defaults -json -v -count=1 -timeout 60m -p 1, so a
repeated flag overrides a default. If none of them names packages (./... or
github.com/matrix-org/complement/...), ./tests/... is added. Examples:

  scripts/complement.sh ../complement -run 'TestLogin|TestRegistration'
  scripts/complement.sh ../complement -run TestVersionStructure ./tests/csapi

Results go to complement-results/ in this repository:
  results.jsonl   the go test -json stream (and go command messages)
  summary.txt     every top-level test and subtest with PASS, FAIL, SKIP or NONE
  failures.txt    the output of every failed test
Totals are printed at the end.

Environment passed through to Complement (see its ENVIRONMENT.md), with these defaults:
  COMPLEMENT_SPAWN_HS_TIMEOUT_SECS=30, COMPLEMENT_DEBUG (unset), COMPLEMENT_ALWAYS_PRINT_SERVER_LOGS,
  COMPLEMENT_ENABLE_DIRTY_RUNS, COMPLEMENT_HOSTNAME_RUNNING_COMPLEMENT, and any other COMPLEMENT_*.

Exit status: 0 if every test passed or was skipped; 1 if a test failed, never reported (a
timeout or panic), or a package failed to build; 2 if the image could not be built or Docker
is not usable.
EOF
}

die() {
	echo "complement.sh: $*" >&2
	exit 2
}

image_only=false
case "${1:-}" in
--image-only) image_only=true ;;
-h | --help) usage; exit 0 ;;
"") usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
complement_dir=""
if ! $image_only; then
	complement_dir=$(cd "$1" 2>/dev/null && pwd) || die "no such directory: $1"
	[[ -f "$complement_dir/go.mod" && -d "$complement_dir/tests" ]] ||
		die "$complement_dir is not a checkout of matrix-org/complement"
	shift
fi

# Preflight: a working Docker engine. There is no registry here, so nothing may be pulled:
# the image is FROM scratch and Complement only runs images that exist locally.
command -v docker >/dev/null || die "docker not found; see docs/complement.md"
docker info >/dev/null 2>&1 ||
	die "cannot reach the Docker engine (is dockerd running?); see docs/complement.md"

# Complement publishes each homeserver's ports on all host addresses of its own networks
# (PublishAllPorts). Warn if new connections from the internet could reach them.
if command -v iptables >/dev/null && command -v ip >/dev/null && [[ $(id -u) == 0 ]]; then
	ext=$(ip route show default 2>/dev/null | awk '{print $5; exit}')
	if [[ -n "$ext" ]] && ! iptables -S DOCKER-USER 2>/dev/null | grep -q -- "-i $ext .*-j DROP"; then
		echo "complement.sh: warning: container ports will be reachable through $ext;" \
			"see 'Keeping containers on loopback' in docs/complement.md" >&2
	fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The image's root file system: the static binary, the config, and the empty directories a
# scratch image lacks (/tmp must be world-writable and sticky, as everywhere).
ctx="$work/context"
mkdir -p "$ctx/rootfs/data" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp "$repo/build/complement/Dockerfile" "$repo/build/complement/dendrite.yaml" "$ctx/"

echo "complement.sh: building myelin" >&2
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/myelin" ./cmd/myelin) ||
	die "building cmd/myelin failed"

# FROM scratch has no libc or dynamic loader, so the binary must be static.
go version -m "$ctx/myelin" | grep -q 'CGO_ENABLED=0' || die "myelin was built with cgo"
if command -v readelf >/dev/null && readelf -l "$ctx/myelin" | grep -q INTERP; then
	die "myelin is dynamically linked (it has an ELF interpreter)"
fi

echo "complement.sh: building image $IMAGE" >&2
docker build --quiet --tag "$IMAGE" "$ctx" >/dev/null ||
	die "docker build failed"
echo "complement.sh: built $IMAGE ($(docker image inspect --format '{{.Id}}' "$IMAGE"))" >&2

if $image_only; then
	exit 0
fi

# Build the summary tool before the run, so a long run is not lost to a compile error.
(cd "$repo" && go build -o "$work/complement-summary" ./scripts/complement-summary) ||
	die "building scripts/complement-summary failed"

args=("$@")
has_pkg=false
for a in "${args[@]}"; do
	case "$a" in
	./* | github.com/matrix-org/complement*) has_pkg=true ;;
	esac
done
$has_pkg || args+=(./tests/...)

results="${MYELIN_COMPLEMENT_RESULTS:-$repo/complement-results}"
mkdir -p "$results"
rm -f "$results/results.jsonl" "$results/summary.txt" "$results/failures.txt"

export COMPLEMENT_BASE_IMAGE="$IMAGE"
export COMPLEMENT_SPAWN_HS_TIMEOUT_SECS="${COMPLEMENT_SPAWN_HS_TIMEOUT_SECS:-30}"

echo "complement.sh: running Complement in $complement_dir: go test ${args[*]}" >&2
set +e
(cd "$complement_dir" && go test -json -v -count=1 -timeout 60m -p 1 "${args[@]}" 2>&1) |
	tee "$results/results.jsonl" |
	"$work/complement-summary" -progress -o "$results/summary.txt" -failures "$results/failures.txt"
statuses=("${PIPESTATUS[@]}")
set -e

go_status=${statuses[0]}
summary_status=${statuses[2]}
echo "complement.sh: results in $results (summary.txt, failures.txt, results.jsonl)" >&2
if ((summary_status == 2)); then
	die "summarising the results failed"
fi
if ((go_status != 0 || summary_status != 0)); then
	exit 1
fi
