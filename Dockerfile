# mlgate: the gateway and its model repository in one image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service ./service
COPY feature_store ./feature_store
COPY replay ./replay
COPY loadtests ./loadtests
RUN pip install .

COPY models ./models

# Settings come from MLGATE_* variables (see README): point MLGATE_FEATURE_STORE at Redis.
ENV MLGATE_HOST=0.0.0.0 MLGATE_PORT=8000 MLGATE_MODELS=/app/models
EXPOSE 8000
USER nobody
CMD ["mlgate", "serve"]
