# syntax=docker/dockerfile:1
# One image for every service of docker-compose.yml (web, migrate, embedding workers, provider
# worker, beat, flower); the command picks the role.
#
# torch variants (requirements.txt pins torch==2.13.0; the variant is the index it comes from):
#   CPU (default):  docker build -t embedplatform .
#   CUDA:           docker build -t embedplatform:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# A CUDA build runs on the host's NVIDIA driver through the NVIDIA Container Toolkit (the
# wheels bundle the CUDA runtime; no CUDA base image needed). `==2.13.0` accepts the local
# builds `2.13.0+cpu` / `2.13.0+cu128`, so requirements.txt stays as it is.

ARG PYTHON_VERSION=3.11

# --- build: a virtualenv with every pinned requirement ------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# torch first, from the variant's index; then the rest from PyPI (torch is then satisfied).
RUN pip install "$(grep -E '^torch==' /tmp/requirements.txt)" --index-url "${TORCH_INDEX_URL}" \
 && pip install -r /tmp/requirements.txt

# --- runtime: the virtualenv and the code, run as an unprivileged user -------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=embedplatform.settings.base \
    VAR_DIR=/app/var \
    HOST=0.0.0.0 \
    PORT=8000 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=app:app . /app
RUN mkdir -p /app/var && chown app:app /app/var
USER app
EXPOSE 8000 5555 9808
# The web API; docker-compose.yml gives each other service its own command.
CMD ["python", "scripts/run.py", "web", "--no-migrate"]
