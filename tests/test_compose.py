"""docker-compose.yml cannot run here (no Docker engine): check its topology instead.

The same topology runs for real without Docker in test_workers_redis.py."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_service_of_the_topology_is_there_with_a_healthcheck(spec):
    services = spec["services"]
    assert set(services) >= {"api", "worker", "worker-gpu", "redis", "flower"}
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no healthcheck"
    assert "healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])


def test_api_and_workers_share_the_data_volume_and_use_redis(spec):
    services = spec["services"]
    for name in ("api", "worker", "worker-gpu", "flower"):
        svc = services[name]
        assert any(str(v).startswith("shapesearch-data:/data") for v in svc["volumes"]), name
        assert svc["environment"]["SHAPESEARCH_DATA_DIR"] == "/data"
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379/0", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])
    assert {"shapesearch-data", "redis-data"} <= set(spec["volumes"])


def test_workers_scale_and_the_gpu_worker_reserves_a_gpu(spec):
    worker, gpu = spec["services"]["worker"], spec["services"]["worker-gpu"]
    for svc in (worker, gpu):
        assert "ports" not in svc and "container_name" not in svc  # or --scale worker=N would clash
        assert svc["command"][-1] == "worker"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["SHAPESEARCH_DEVICE"] == "cuda"
    assert "flower" in spec["services"]["flower"]["command"]


def test_dockerfile_installs_like_make(spec):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "make venv" in dockerfile and "shapesearch" in dockerfile and "flower" in dockerfile


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_validates():
    r = subprocess.run(["docker", "compose", "--profile", "gpu", "config", "-q"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0 and ("not a docker command" in r.stderr or "unknown" in r.stderr.lower()):
        pytest.skip("docker compose plugin missing")
    assert r.returncode == 0, r.stderr
