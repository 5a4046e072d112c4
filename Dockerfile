# Placeholder until the deployment issue: a CPU image that runs the current main job
# (MovieLens-100K, popularity vs SASRec). The multi-stage CUDA/CPU serving image, its
# non-root user and HEALTHCHECK arrive with the service.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps recbole==1.2.1
CMD ["flexcode", "benchmark", "--dataset", "ml-100k", "--models", "pop,sasrec", "--seeds", "1"]
