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
COPY pyproject.toml constraints.txt README.md ./
COPY model ./model
COPY service ./service
# The CPU wheel of torch comes from PyTorch's CPU index; constraints.txt pins the version.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt ".[serve]" \
    && useradd --create-home --uid 10001 semid \
    && mkdir -p /data && chown semid:semid /data

USER semid
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["semid", "serve", "--index", "/data/index", "--host", "0.0.0.0", "--port", "8000"]
