FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY drift drift
COPY service service
COPY migrations migrations
# pip resolves torch from the index configured for the build (CPU or CUDA wheels).
RUN pip install --no-cache-dir .
ENTRYPOINT ["forgetwatch"]
CMD ["serve", "--host", "0.0.0.0"]
