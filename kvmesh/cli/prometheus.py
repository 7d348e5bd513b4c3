"""The Prometheus `kvmesh up --prometheus` starts: Debian's binary (scripts/setup.sh unpacks the
package under build/prometheus, so that no system daemon starts listening on every interface),
on 127.0.0.1, its data in the run's log directory, its targets from kvmesh/prometheus_sd.py's
file and the recording rules in deploy/prometheus/ when they are there."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from kvmesh.tls import MutualTls

ROOT = Path(__file__).resolve().parents[2]
UNPACKED = ROOT / "build" / "prometheus" / "usr" / "bin" / "prometheus"
RULES = ROOT / "deploy" / "prometheus" / "recording_rules.yml"
RETENTION = "6h"  # a run's worth: the data is for looking at the mesh while it runs
TARGETS_FILE = "targets.json"


def binary() -> Path | None:
    """The unpacked Debian binary, else one on PATH."""
    if UNPACKED.is_file():
        return UNPACKED
    found = shutil.which("prometheus")
    return Path(found) if found else None


def duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def config(targets: Path, interval_s: float, rules: Path | None = RULES, tls: MutualTls | None = None) -> dict:
    """One scrape job over the file's targets (their `job` label names the kind), scraped and
    re-read every `interval_s`. `tls`: the client certificate an https target (the gateway
    under `--tls-dir`) asks for, and the CA to trust it by."""
    every = duration(interval_s)
    job = {"job_name": "kvmesh", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": every}]}
    if tls:
        job["tls_config"] = {"ca_file": str(tls.ca), "cert_file": str(tls.cert), "key_file": str(tls.key)}
    document = {
        "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
        "scrape_configs": [job],
    }
    if rules and rules.is_file():
        document["rule_files"] = [str(rules)]
    return document


def prepare(directory: Path, interval_s: float, tls: MutualTls | None = None) -> tuple[Path, Path]:
    """Writes the config and an empty targets file (the service discovery fills it) into
    `directory`; returns (config file, targets file)."""
    directory.mkdir(parents=True, exist_ok=True)
    targets = directory / TARGETS_FILE
    if not targets.exists():
        targets.write_text("[]\n")
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(targets, interval_s, tls=tls), sort_keys=False))
    return config_file, targets


def argv(program: Path, config_file: Path, port: int, data: Path) -> list[str]:
    return [
        str(program),
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={RETENTION}",
    ]
