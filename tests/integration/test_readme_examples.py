"""The README's client examples, run as written against the session's mesh (only the loopback
ports of the documented defaults are swapped for the mesh's)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_REST, DEFAULT_HTTP, DEFAULT_GRPC = "http://127.0.0.1:8082", "http://127.0.0.1:8080", "127.0.0.1:8081"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def curl_examples() -> list[str]:
    return [line for block in code_blocks("sh") for line in block.splitlines() if line.startswith("curl ")]


def for_mesh(text: str, mesh) -> str:
    return text.replace(DEFAULT_REST, mesh.rest).replace(DEFAULT_HTTP, mesh.http).replace(DEFAULT_GRPC, mesh.grpc)


def test_the_readme_has_curl_examples():
    assert len(curl_examples()) >= 8


@pytest.mark.parametrize("example", curl_examples())
def test_curl_example(mesh, example):
    done = subprocess.run(["bash", "-c", for_mesh(example, mesh)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        replies = [json.loads(done.stdout)]
    except json.JSONDecodeError:  # a stream: newline-delimited JSON
        replies = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    errors = [r for r in replies if "error" in r]
    if "# error" in example:
        assert errors, done.stdout
    else:
        assert replies and not errors, done.stdout


@pytest.mark.parametrize("example", code_blocks("python"))
def test_python_example(mesh, example):
    exec(compile(for_mesh(example, mesh), str(README), "exec"), {})  # noqa: S102 - our own README
