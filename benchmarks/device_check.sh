#!/usr/bin/env bash
# The device check for a CUDA machine (docs/gpu.md): about 10 minutes on one H100/H200.
# Prints: torch and GPU, the tiny quickstart on the runtime's device, the tests marked `cuda`,
# and benchmarks/gpu.py (our annotator against plain generate, bf16, same batch; student steps).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count(), 'transformers', transformers.__version__)"
echo "== tiny quickstart"
timeout 300 python -m reasondistill run quickstart --profile tiny --runs-dir "$OUT/runs" \
  && python -m reasondistill show quickstart --runs-dir "$OUT/runs" \
  && python -c "import json,sys; print('runtime:', json.load(open('$OUT/runs/quickstart/distill/manifest.json'))['runtime'])"
echo "== tests marked cuda"
timeout 200 python -m pytest -q -p no:cacheprovider -m cuda tests
echo "== annotator vs plain generate; student steps"
timeout 240 python benchmarks/gpu.py --prompts 256 --batch 256 --max-new-tokens 64
