# semid: CPU-only image; `semid serve` by default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEMID_HOST=0.0.0.0 \
    SEMID_PORT=8000 \
    SEMID_INDEX_DIR=/data/index \
    MALLOC_ARENA_MAX=2

WORKDIR /app
COPY pyproject.toml constraints.txt requirements-runtime.lock README.md ./
COPY model ./model
COPY service ./service
# Every runtime dependency hash-pinned (requirements-runtime.lock, refreshed by `bash .ci/lock`); the CPU wheel of
# torch comes from PyTorch's CPU index. Then semid itself, without dependencies.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --require-hashes -r requirements-runtime.lock \
    && pip install --no-deps --no-build-isolation . \
    && useradd --create-home --uid 10001 semid \
    && mkdir -p /data && chown semid:semid /data

USER semid
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["semid", "serve", "--index", "/data/index", "--host", "0.0.0.0", "--port", "8000"]
