"""The built images (issue 15), smoke-tested inside each one: `make images` builds them
(infra/docker/build.sh) and runs this file with VMEM_IMAGES set; `make test` skips it (no images
built there). Each image runs, as its non-root user with `buildah run --isolation chroot` (no
container runtime needed): `vmem --help`, a tiny ingest -> build -> in-process query on images
written inside it (infra/docker/smoke.py), and `vmem serve --check` on the packaged Serve config
and the RayService manifest. The image carries the commit it was built from and no secrets."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = os.environ.get("VMEM_IMAGES", "").split()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not IMAGES, reason="no images given: `make images` runs these"),
              pytest.mark.skipif(shutil.which("buildah") is None, reason="needs buildah")]
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|ACCESS_KEY|PRIVATE", re.I)


def buildah(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(params=IMAGES or ["none"])
def container(request):
    """A working container of the image (discarded after the test)."""
    image = request.param
    name = buildah("from", "--pull-never", image).strip()
    try:
        yield image, name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


def inside(name: str, *command: str, user: str = "", timeout: float = 900) -> str:
    """Run ``command`` in the working container, as the image's user unless ``user`` is given."""
    as_user = ["--user", user] if user else []
    return buildah("run", "--isolation", "chroot", *as_user, name, "--", *command, timeout=timeout)


def test_the_image_runs_the_project_as_a_non_root_user_and_holds_no_secrets(container):
    image, name = container
    config = json.loads(buildah("inspect", "--type", "image", image))
    user = config["OCIv1"]["config"].get("User", "")
    assert user and user not in ("root", "0"), f"{image} runs as {user!r}"
    assert inside(name, "id", "-u").strip() != "0"
    env = config["OCIv1"]["config"].get("Env", [])
    assert not [e for e in env if SECRET_NAMES.search(e.split("=", 1)[0])], env
    revision = config["OCIv1"]["config"]["Labels"]["org.opencontainers.image.revision"]
    assert revision == os.environ["VMEM_IMAGE_REVISION"]
    assert inside(name, "cat", "/opt/vmem-lock/REVISION").strip() == revision
    # No credentials, tokens or repository history anywhere in the image's file system (searched
    # as root, so that no directory is skipped).
    names = ["auth_token", ".netrc", ".git-credentials", ".pypirc", "id_rsa*", "id_ed25519*",
             "id_ecdsa*", "id_dsa*", "credentials.json", "application_default_credentials.json"]
    anywhere = [arg for n in names for arg in ("-o", "-name", n)][1:]
    keys = ["(", "-name", "*.pem", "-o", "-name", "*.key", ")", "(", "-path", "/home/*", "-o",
            "-path", "/root/*", "-o", "-path", "/opt/vmem-lock/*", ")"]
    found = inside(name, "find", "/", "-xdev", "(", *anywhere, "-o", "-name", ".git", "-type", "d",
                   "-o", *keys, ")", "-print", user="0:0")
    assert found.strip() == "", found
    assert "usage: vmem <command>" in inside(name, "vmem", "--help")


def test_ingest_build_and_query_inside_the_image(container):
    image, name = container
    buildah("copy", "--chown", "1000:1000", name, str(ROOT / "infra" / "docker" / "smoke.py"),
            "/home/vmem/smoke.py")
    buildah("copy", "--chown", "1000:1000", name, str(ROOT / "infra" / "kuberay" / "rayservice.yaml"),
            "/home/vmem/rayservice.yaml")
    result = json.loads(inside(name, "python", "/home/vmem/smoke.py", "/home/vmem/rayservice.yaml")
                        .strip().splitlines()[-1])
    report = os.environ.get("VMEM_IMAGE_REPORT")
    if report:  # make images keeps each image's result beside the build (infra/README.md)
        Path(report).mkdir(parents=True, exist_ok=True)
        (Path(report) / f"smoke-{image.rsplit('/', 1)[-1].replace(':', '-')}.json").write_text(
            json.dumps(result, indent=1))
    assert result["uid"] != 0 and result["help_lists_commands"]
    assert result["predicted"] == result["expected"]  # each colour's new patch is voted its colour
    assert len(result["serve_check"]) == 2
    assert all("is valid" in line for line in result["serve_check"]), result["serve_check"]
    assert result["revision"] == os.environ["VMEM_IMAGE_REVISION"]
    # GPU images carry faiss's GPU build and torch's CUDA build; here they run on the CPU.
    assert result["faiss_gpu_build"] == ("gpu" in image.rsplit("/", 1)[-1])
    assert result["torch_cuda"] and result["cuda_devices"] == 0
