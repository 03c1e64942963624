# One image for the API, the workers and Flower: the same `make venv` path as a bare machine.
# TORCH_INDEX picks the torch build: the CPU wheels by default, a CUDA index for GPU workers.
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        make libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile ./
COPY scripts scripts
COPY service service
COPY worker worker
COPY models models
COPY shape_library shape_library
COPY web web
RUN make venv PYTHON=python3.11 TORCH_INDEX=${TORCH_INDEX} && .venv/bin/pip install -q "flower>=2"
ENV PYOPENGL_PLATFORM=egl SHAPESEARCH_DATA_DIR=/data SHAPESEARCH_HOST=0.0.0.0
EXPOSE 8000 5555
CMD [".venv/bin/shapesearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
