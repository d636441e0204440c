# Production image: external PostgreSQL and Redis via DATABASE_URL / REDIS_URL.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 COLLAB_HOST=0.0.0.0 COLLAB_PORT=8080
COPY pyproject.toml README.md ./
COPY collab_server ./collab_server
COPY sql ./sql
RUN pip install --no-cache-dir -e . && useradd --system collab
USER collab
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz').status == 200 else 1)"
CMD ["collab-server", "serve"]
