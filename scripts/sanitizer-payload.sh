#!/usr/bin/env bash
# Packs the GPU test binaries of a -DPDVM_CUDA=ON build for a compute-sanitizer run on the device
# machine (docs/testing.md): DEST gets bins.tar.xz (every tests/gpu_* binary, debug info stripped,
# symbols kept for the host backtraces; one xz stream with a dictionary larger than all of them,
# since they share most of their bytes: ~5 MB for 13 binaries), the shared libraries the device
# lacks, compute-sanitizer.sh, sanitizer_report.py, the commit, and run.sh, which the device runs.
#   usage: scripts/sanitizer-payload.sh BUILD_DIR DEST
set -euo pipefail
build=${1:?usage: sanitizer-payload.sh BUILD_DIR DEST}
dest=${2:?usage: sanitizer-payload.sh BUILD_DIR DEST}
scripts=$(cd "$(dirname "$0")" && pwd)
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

mkdir -p "$staging/bins" "$dest"
for f in "$build"/tests/gpu_*_test; do strip --strip-debug -o "$staging/bins/${f##*/}" "$f"; done
tar cf - -C "$staging" bins | xz -T1 -9 --lzma2=preset=9,dict=256MiB >"$dest/bins.tar.xz"
cp -L /lib/x86_64-linux-gnu/libfmt.so.9 /lib/x86_64-linux-gnu/libpcre2-8.so.0 /lib/x86_64-linux-gnu/libhwy.so.1 "$dest/"
cp "$scripts/compute-sanitizer.sh" "$scripts/sanitizer_report.py" "$dest/"
git -C "$scripts" log -1 --format='%H %cd %s' --date=iso >"$dest/commit"

cat >"$dest/run.sh" <<'EOF'
#!/usr/bin/env bash
# compute-sanitizer memcheck + racecheck of every GPU test binary (commit: see the file `commit`)
# over the GPUs of the machine (CUDA_VISIBLE_DEVICES, else all), ~8 minutes. The default-model tests
# run too if /tmp/lead/model.gguf is there. SANITIZER_BUDGET (seconds, default 420) and
# SANITIZER_JOBS (runs at once, default 3/4 of the cores) adjust it when the machine is shared,
# SANITIZER_ONLY (an extended regex of run names, e.g. 'mc_tp|rc_model') runs a part.
# Results: $OUT/hardening/ (summary.txt, runs.log, logs.tgz with every run's log).
# Carry: this folder. Run: bash .gpu/<folder>/run.sh 2>&1 | tee $OUT/log   (timeout_s 600)
set -u -o pipefail
payload=$(cd "$(dirname "$0")" && pwd)
work=/tmp/hardening-sanitizer
rm -rf "$work" && mkdir -p "$work"
results=${OUT:-$work/out}/hardening
mkdir -p "$results"
t0=$SECONDS
xz -dc "$payload/bins.tar.xz" | tar xf - -C "$work"
cp "$payload"/*.so* "$work/bins/"
echo "commit: $(cat "$payload/commit")"
nvidia-smi -L
echo "unpacked in $((SECONDS - t0)) s; $(nproc) cores"
options=()
[[ -f /tmp/lead/model.gguf ]] && options=(--model /tmp/lead/model.gguf)
[[ -n ${SANITIZER_JOBS:-} ]] && options+=(--jobs "$SANITIZER_JOBS")
[[ -n ${SANITIZER_ONLY:-} ]] && options+=(--only "$SANITIZER_ONLY")
bash "$payload/compute-sanitizer.sh" "$work/bins" "$work/run" --budget "${SANITIZER_BUDGET:-420}" "${options[@]}"
cp "$work/run/summary.txt" "$work/run/runs.log" "$results/" 2>/dev/null
for log in "$work"/run/logs/*.log; do  # a run that reports thousands of hazards: its start and end
  if (( $(stat -c %s "$log") > 2000000 )); then
    { head -c 1500000 "$log"; echo; echo "[... cut to 2 MB for the results ...]"; tail -c 400000 "$log"; } >"$log.cut"
    mv "$log.cut" "$log"
  fi
done
tar czf "$results/logs.tgz" -C "$work/run" logs runs.log plan.txt summary.txt 2>/dev/null
echo "done in $((SECONDS - t0)) s; logs in $results"
EOF
chmod +x "$dest/run.sh"
du -sh "$dest"
