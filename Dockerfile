# The API image: the same `make run` path as a bare machine, so there is one way to install.
FROM python:3.11-slim-bookworm
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
RUN make venv PYTHON=python3.11
ENV PYOPENGL_PLATFORM=egl SHAPESEARCH_DATA_DIR=/data SHAPESEARCH_HOST=0.0.0.0
EXPOSE 8000
CMD [".venv/bin/shapesearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
