#!/usr/bin/env bash
# Build a separate virtual environment with TerraTorch's PrithviMAE, the baseline of
# bench/model.py. It is kept out of the project's .venv: TerraTorch needs torchvision, which
# has no CPU build and pulls the CUDA build of torch (~5 GB). Only the packages the
# prithvi_mae module imports are installed (torch, torchvision, timm, einops), plus
# terratorch itself without its (very large) dependency tree. Packages come from pip's configured
# index (pip.conf / PIP_INDEX_URL), like every other install of the project.
set -euo pipefail
PEER_VENV=${PEER_VENV:-.peer-venv}
TORCH=${TORCH:-2.13.0}
TORCHVISION=${TORCHVISION:-0.28.0}
python3 -m venv "$PEER_VENV"
"$PEER_VENV/bin/pip" install -q \
    "torch==$TORCH" "torchvision==$TORCHVISION" einops numpy pillow pyyaml huggingface_hub safetensors
"$PEER_VENV/bin/pip" install -q --no-deps timm terratorch segmentation_models_pytorch
echo "peer ready: .venv/bin/python bench/model.py --peer-python $PEER_VENV/bin/python"
