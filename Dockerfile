FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY drift drift
COPY service service
COPY migrations migrations
# pip resolves torch from the index configured for the build (CPU or CUDA wheels).
RUN pip install --no-cache-dir .
# The service runs unprivileged; it writes only its data dir and reads checkpoints.
RUN useradd --uid 10001 --home-dir /data --no-create-home forgetwatch \
    && mkdir -p /data /checkpoints && chown forgetwatch:forgetwatch /data /checkpoints
USER 10001:10001
ENV FORGETWATCH_DATA_DIR=/data
ENTRYPOINT ["forgetwatch"]
CMD ["serve", "--host", "0.0.0.0"]
