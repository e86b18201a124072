# lmforge: serve the shipped checkpoints over HTTP.
#
#   docker build -t lmforge .                                   # CPU image (default)
#   docker run --rm -p 8000:8000 lmforge                        # then: curl localhost:8000/health
#   docker build -t lmforge:cuda \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime \
#     --build-arg TORCH_INDEX_URL= .                            # CUDA: torch comes from the base
#
# Settings are LMFORGE_* environment variables (see README), e.g. -e LMFORGE_API_KEY=secret.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: a virtualenv with lmforge
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokenizer ./tokenizer
COPY lm ./lm
COPY service ./service
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi \
 && pip install .

# ---------------------------------------------------------------- runtime: venv + checkpoints, non-root
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LMFORGE_HOST=0.0.0.0 \
    LMFORGE_PORT=8000 \
    LMFORGE_CHECKPOINTS=/app/checkpoints
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 lmforge
WORKDIR /app
COPY --chown=lmforge:lmforge checkpoints ./checkpoints
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LMFORGE_PORT', '8000'), timeout=4)"]
CMD ["lmforge", "serve", "--host", "0.0.0.0"]
