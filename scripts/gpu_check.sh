#!/usr/bin/env bash
# Every CUDA path once, in under 8 minutes on one GPU: the default recipe, a fine-tune, predict over a folder
# (images/s), serve, torchrun on 2 GPUs where present, and a short benchmark. Figures and logs go to OUT.
#
#   python scripts/make_sample.py ../shared/data --per-breed 1000 1000 --short-side 300 --out .gpu-data
#   bash scripts/gpu_check.sh .gpu-data gpu-check
set -uo pipefail
DATA=${1:?usage: gpu_check.sh DATA_ROOT [OUT]}
OUT=${2:-gpu-check}
mkdir -p "$OUT"
PET=(python -m petclassifier)
COMMON=(--dataset oxford-iiit-pet --data-dir "$DATA" --device cuda --cache-dir "$OUT/cache")
failed=()
step() {  # step NAME SECONDS COMMAND...: its output in OUT/NAME.log, its last lines here
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  echo "== $name: status $status in $((SECONDS - started)) s"
  tail -n 4 "$OUT/$name.log"
  [ "$status" -eq 0 ] || failed+=("$name")
}

nvidia-smi -L
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
pip install -q -e ".[web]" >"$OUT/install.log" 2>&1
step default 150 "${PET[@]}" train "${COMMON[@]}" --out "$OUT/default"
step species 90 "${PET[@]}" train "${COMMON[@]}" --task species --out "$OUT/species"
step finetune 120 "${PET[@]}" train "${COMMON[@]}" --model efficientnet_lite0 --trainable-stages -1 --epochs 3 \
  --out "$OUT/finetune"
step evaluate 60 "${PET[@]}" evaluate --checkpoint "$OUT/default" "${COMMON[@]:0:4}" --device cuda \
  --cache-dir "$OUT/cache"
step predict 90 python - "$OUT/default" "$DATA/oxford-iiit-pet/images" <<'EOF'
import sys, time
from pathlib import Path
from petclassifier import PetClassifier
classifier = PetClassifier.from_checkpoint(sys.argv[1], device="cuda")
paths = sorted(Path(sys.argv[2]).glob("*.jpg")) * 4
for flip in (None, False):
    c = PetClassifier.from_checkpoint(sys.argv[1], device="cuda", flip_tta=flip)
    c.predict_paths(paths[:512], workers=8)  # warm-up: cuDNN picks its kernels
    started = time.perf_counter()
    answers = c.predict_paths(paths, workers=8, batch_size=256)
    print(f"predict flip_tta={c.flip_tta}: {len(answers) / (time.perf_counter() - started):,.0f} images/s "
          f"over {len(answers):,} photos")
EOF
step serve 60 python - "$OUT/default" "$DATA/oxford-iiit-pet/images" <<'EOF'
import json, subprocess, sys, time, urllib.request
from pathlib import Path
server = subprocess.Popen([sys.executable, "-m", "petclassifier", "serve", "--checkpoint", sys.argv[1], "--port",
                           "8765", "--device", "cuda"])
try:
    for _ in range(120):
        try:
            urllib.request.urlopen("http://127.0.0.1:8765/api/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    photo = sorted(Path(sys.argv[2]).glob("*.jpg"))[0]
    boundary = "pets"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{photo.name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request("http://127.0.0.1:8765/api/predict", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    print(json.loads(urllib.request.urlopen(request, timeout=30).read())[0]["predictions"][0])
finally:
    server.terminate()
EOF
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  step torchrun 180 python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/train.py "${COMMON[@]}" \
    --out "$OUT/torchrun"
else
  echo "== torchrun: one GPU only, not run"
fi
step benchmark 240 python scripts/benchmark.py "${COMMON[@]:0:4}" --device cuda --tutorial-epochs 3 \
  --out "$OUT/benchmark" --json "$OUT/benchmark.json"
echo "failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
