"""``vmem serve``: run the visual memory's HTTP API on Ray Serve (127.0.0.1 unless told otherwise).

    VMEM_TOKEN=secret vmem serve --memory .demo/memory --port 8000

Options come from a Serve config file (default: the packaged serving/serve_config.yaml); the
flags override its memory, host and port. On a cluster, deploy the same file with
``serve deploy``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")


def load_config(path: str | Path, memory: str | None = None, host: str | None = None,
                port: int | None = None, extra_args: dict | None = None) -> dict:
    """The Serve config with command-line overrides applied (one application)."""
    config = yaml.safe_load(Path(path).read_text())
    application = config["applications"][0]
    if memory:
        application["args"]["memory"] = memory
    application["args"].update(extra_args or {})
    http = config.setdefault("http_options", {})
    http["host"] = host or http.get("host", "127.0.0.1")
    http["port"] = int(port if port is not None else http.get("port", 8000))
    return config


def start(config: dict, ray_address: str | None = None):
    """Start Ray (local on loopback unless an address is given), Serve, and the application."""
    import ray
    from ray import serve

    from serving.app import build_app

    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": config["http_options"]["host"],
                              "port": config["http_options"]["port"]})
    application = config["applications"][0]
    overrides = {d["name"]: {k: v for k, v in d.items() if k != "name"}
                 for d in application.get("deployments", [])}
    app = build_app(application["args"], overrides)
    return serve.run(app, name=application["name"], route_prefix=application.get("route_prefix", "/"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmem serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", "-m", help="ROOT of the visual memory (overrides the config).")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file (YAML).")
    parser.add_argument("--host", default=None, help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8000).")
    parser.add_argument("--ray-address", default=None, help="Join a Ray cluster instead of starting one.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = load_config(args.config, args.memory, args.host, args.port)
    start(config, args.ray_address)
    http = config["http_options"]
    print(f"serving {config['applications'][0]['args']['memory']} on http://{http['host']}:{http['port']}"
          f" (OpenAPI at /docs); Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop a foreground server
        logging.getLogger("vmem.serve").info("interrupted: shutting Serve down")
    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
