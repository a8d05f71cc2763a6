"""``vmem serve``: run the visual memory's HTTP API on Ray Serve (127.0.0.1 unless told otherwise).

    VMEM_TOKEN=secret vmem serve --memory .demo/memory --port 8000

Options come from a Serve config file (default: the packaged serving/serve_config.yaml), or
from a KubeRay RayService manifest (its ``serveConfigV2``); the flags override its memory, host
and port. ``vmem serve --check --config F`` validates F without starting Ray: Serve's schema,
every application option, the deployment names; for a RayService also that it configures only
deployments the application builds, which ``serve deploy`` requires.

Queries are fastest on the direct data plane (``data_plane_port``, default 8001: each Router
replica answers there itself, no proxy hop); Serve's proxy port answers the same API. On a
cluster, ``serve deploy`` a config that lists only the deployments the application builds
(``vmem serve --check`` on a RayService says so; the packaged file also configures Searcher0/1,
used once ``searcher_groups`` is raised).

Tokens: ``vmem serve`` reads the token variables (``token_env``, default VMEM_TOKEN, and
``read_token_env``, default VMEM_READ_TOKEN) from its own environment and hands them to the
Router replicas in their runtime_env ``env_vars`` (a token given literally as ``token`` /
``read_token`` is moved there too), so the replicas see them whether Ray was started here or
joined with ``--ray-address`` (a replica runs in a Ray worker, which inherits the environment of
its node's ``ray start``, not this process's). With ``serve deploy`` the config file's
``runtime_env`` or the nodes' own environment must carry them (infra/kuberay/rayservice.yaml:
pod env from a Secret). runtime_env values are visible to whoever can read Ray's dashboard or
state API; that access already means running code on the cluster, so keep it private.
"""
from __future__ import annotations

import argparse
import copy
import errno
import logging
import os
import re
import signal
import socket
import threading
from pathlib import Path

import yaml

from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
TOKEN_DEPLOYMENTS = ("Router",)  # the deployments that check bearer tokens (serving/auth.py)
TOKEN_OPTIONS = (("token", "token_env"), ("read_token", "read_token_env"))
TAKE_DOWN_TIMEOUT_S = 30.0  # deleting the application at exit at most (Serve's shutdown waits as long)


def serve_config_of(document: dict) -> dict:
    """The Serve config in a parsed YAML document: the document itself, or a KubeRay
    RayService's ``spec.serveConfigV2`` (a YAML string). Raises ValueError for anything else."""
    if not isinstance(document, dict):
        raise ValueError("a Serve config must be a YAML mapping")
    if document.get("kind") == "RayService":
        embedded = (document.get("spec") or {}).get("serveConfigV2")
        if not isinstance(embedded, str):
            raise ValueError("RayService without spec.serveConfigV2")
        document = yaml.safe_load(embedded)
        if not isinstance(document, dict):
            raise ValueError("the RayService's serveConfigV2 must be a YAML mapping")
    applications = document.get("applications")
    if not (isinstance(applications, list) and applications and isinstance(applications[0], dict)):
        raise ValueError("a Serve config needs 'applications' (or give a RayService manifest)")
    return document


def check_config(config: dict, deploy: bool = False) -> dict[str, dict]:
    """Validate a Serve config without starting Ray: Serve's own schema (``ServeDeploySchema``),
    every application's options (``ServingOptions.from_args``: unknown, mistyped or
    out-of-range options), and its deployment names (those ``build_app`` can make: Router,
    Writer, EncoderDeployment, Searcher<g>). Returns ``{application name: {"deployments":
    names, "unused": names, "searcher_groups": G}}``, unused being the Searcher<g> with g >=
    G and the EncoderDeployment of an ``embeddings_only`` application: ``vmem serve`` ignores
    them, ``serve deploy`` refuses them (and with S shards builds only min(G, S) groups), so
    with ``deploy`` they are an error. Raises ValueError naming what is wrong."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from serving.options import ServingOptions

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        raise ValueError(f"not a valid Serve config: {error}") from error
    checked = {}
    for application in config["applications"]:
        if application.get("import_path") != "serving.app:build_app":
            raise ValueError(f"application {application.get('name')!r}: import_path must be "
                             f"serving.app:build_app, not {application.get('import_path')!r}")
        args, _ = token_env_vars(application.get("args") or {}, environ={})
        try:
            options = ServingOptions.from_args(dict(args))
        except TypeError as error:  # a missing or mistyped option
            raise ValueError(f"application {application['name']!r}: {error}") from error
        names = [d["name"] for d in application.get("deployments", [])]
        unknown = [n for n in names if n not in ("Router", "Writer", "EncoderDeployment")
                   and not re.fullmatch(r"Searcher(0|[1-9][0-9]*)", n)]
        if unknown:
            raise ValueError(f"application {application['name']!r}: deployments {unknown} are not "
                             "built by serving.app:build_app (Router, Writer, EncoderDeployment, "
                             "Searcher<g>)")
        unused = [n for n in names if (n.startswith("Searcher") and int(n[8:]) >= options.searcher_groups)
                  or (n == "EncoderDeployment" and options.embeddings_only)]
        if deploy and unused:
            raise ValueError(f"application {application['name']!r}: serve deploy refuses "
                             f"deployments the application does not build: {unused} "
                             f"(searcher_groups {options.searcher_groups}, embeddings_only "
                             f"{options.embeddings_only})")
        checked[application["name"]] = {"deployments": names, "unused": unused,
                                        "searcher_groups": options.searcher_groups}
    return checked


def is_rayservice(path: str | Path) -> bool:
    document = yaml.safe_load(Path(path).read_text())
    return isinstance(document, dict) and document.get("kind") == "RayService"


def load_config(path: str | Path, memory: str | None = None, host: str | None = None,
                port: int | None = None, extra_args: dict | None = None,
                data_plane_port: int | None = None) -> dict:
    """The Serve config of ``path`` (a Serve config or a RayService manifest:
    ``serve_config_of``) with command-line overrides applied (one application)."""
    config = serve_config_of(yaml.safe_load(Path(path).read_text()))
    application = config["applications"][0]
    application.setdefault("args", {})
    if memory:
        application["args"]["memory"] = memory
    if data_plane_port is not None:
        application["args"]["data_plane_port"] = int(data_plane_port)
    application["args"].update(extra_args or {})
    http = config.setdefault("http_options", {})
    http["host"] = host or http.get("host", "127.0.0.1")
    http["port"] = int(port if port is not None else http.get("port", 8000))
    return config


def token_env_vars(args: dict, environ: dict[str, str] | None = None) -> tuple[dict, dict[str, str]]:
    """Split the tokens out of an application's ``args``: returns (args without literal
    ``token`` / ``read_token``, ``{variable: value}``) where the variables are ``token_env`` and
    ``read_token_env`` (their defaults when absent) with the literal value if one was given,
    else the value in ``environ`` (default ``os.environ``) if set. A literal token whose
    variable name is "" stays in the args. Raises nothing."""
    from serving.options import ServingOptions

    environ = os.environ if environ is None else environ
    args, env_vars = dict(args), {}
    for literal, variable in TOKEN_OPTIONS:
        name = args.get(variable, getattr(ServingOptions, variable))
        if not name:
            continue
        if args.get(literal):
            env_vars[name] = str(args.pop(literal))
        elif environ.get(name):
            env_vars[name] = environ[name]
    return args, env_vars


def merge_runtime_env(parent: dict | None, child: dict | None) -> dict:
    """``child`` over ``parent`` as Serve merges an application's and a deployment's
    runtime_env: keys replaced, ``env_vars`` combined (child wins). Neither is modified."""
    merged = copy.deepcopy(dict(parent or {}))
    child = copy.deepcopy(dict(child or {}))
    env_vars = {**merged.get("env_vars", {}), **child.get("env_vars", {})}
    merged.update(child)
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


def deployment_overrides(application: dict, env_vars: dict[str, str], job_runtime_env: dict | None = None) -> dict:
    """Per-deployment ``.options()`` from the config's ``deployments``, with runtime_envs as
    ``serve deploy`` would give them (the application's ``runtime_env`` under each deployment's
    own) and ``env_vars`` added to the token-checking deployments (TOKEN_DEPLOYMENTS). Setting a
    deployment's runtime_env stops Serve from giving it the driver job's, so that
    (``job_runtime_env``) is the base."""
    overrides = {d["name"]: copy.deepcopy({k: v for k, v in d.items() if k != "name"})
                 for d in application.get("deployments", [])}
    app_env = application.get("runtime_env") or {}
    names = set(overrides) if app_env else set()
    names |= set(TOKEN_DEPLOYMENTS) if env_vars else set()
    for name in sorted(names):
        options = overrides.setdefault(name, {})
        actor = options.setdefault("ray_actor_options", {})
        env = merge_runtime_env(merge_runtime_env(job_runtime_env, app_env), actor.get("runtime_env"))
        if name in TOKEN_DEPLOYMENTS:
            env = merge_runtime_env(env, {"env_vars": env_vars})
        actor["runtime_env"] = env
    return overrides


def connect(ray_address: str | None) -> None:
    """This process's Ray, unless it has one: the cluster at ``ray_address``, or a new local
    instance on loopback ("local": never one found on this machine)."""
    import ray

    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            from indexer.localray import init_local

            init_local(include_dashboard=False)


def start(config: dict, ray_address: str | None = None):
    """Start Ray (local on loopback unless an address is given), Serve, and the application.
    Token variables go to the Router replicas in their runtime_env (``token_env_vars``), never
    as application args. Returns the ingress deployment's handle."""
    import ray
    from ray import serve

    from serving.app import build_app

    connect(ray_address)
    serve.start(http_options={"host": config["http_options"]["host"],
                              "port": config["http_options"]["port"]})
    application = config["applications"][0]
    args, env_vars = token_env_vars(application["args"])
    overrides = deployment_overrides(application, env_vars, ray.get_runtime_context().runtime_env)
    app = build_app(args, overrides)
    return serve.run(app, name=application["name"], route_prefix=application.get("route_prefix", "/"))


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 ... 65535."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 ... 65535)")
    return port


def check_ports_free(config: dict) -> None:
    """Before a local start: raise RuntimeError naming the first of the config's ports (HTTP,
    data plane) that cannot be listened on (in use by another server, or an address this
    machine does not have), instead of Serve's tracebacks from its proxy and replicas."""
    http, args = config["http_options"], config["applications"][0]["args"]
    ports = [("--port", http["host"], http["port"])]
    if args.get("data_plane_port"):
        ports.append(("--data-plane-port", args.get("data_plane_host", "127.0.0.1"), args["data_plane_port"]))
    if len(ports) == 2 and ports[0][1:] == ports[1][1:]:
        raise RuntimeError(f"--port and --data-plane-port are both {http['port']}: give them "
                           f"different ports (or --data-plane-port 0 to turn the data plane off)")
    for flag, host, port in ports:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise RuntimeError(f"cannot listen on {host}:{port}: {error.strerror}") from error
        for family, kind, protocol, _, address in addresses:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                try:
                    probe.bind(address)
                except OSError as error:
                    held = (f"; another server (a `vmem serve` left running?) holds it: choose "
                            f"another with {flag}") if error.errno == errno.EADDRINUSE else ""
                    raise RuntimeError(f"cannot listen on {host}:{port} ({error.strerror}){held}") from error


def add_source_roots(config: dict, roots: list[str]) -> dict:
    """Append ``roots`` (``--allow-source-root``) to the config's application's
    ``allowed_source_roots``; returns that application's args (modified in place)."""
    args = config["applications"][0]["args"]
    if roots:
        args["allowed_source_roots"] = list(args.get("allowed_source_roots") or []) + list(roots)
    return args


def check_memory(memory: str | None, version: str | None = None) -> None:
    """Before starting a local Ray instance: raise FileNotFoundError (or ValueError) unless
    ``memory`` has a published index version (``version``, when the config pins one), so that
    a wrong path fails at once rather than after Serve has started and its replicas have
    failed to load. (Not for a joined cluster: its nodes may read a path or bucket this
    machine cannot.)"""
    from indexer.store import resolve_version

    if not memory:
        raise ValueError("no memory: give --memory ROOT (or memory in the config's args)")
    resolve_version(memory, version)


def access_notices(args: dict, environ: dict[str, str] | None = None) -> list[str]:
    """What a starting server tells its user about access, from the application ``args`` and
    the environment the tokens come from: edits refused without an admin token; sources
    (thumbnails, re-ranking) refused without allowed_source_roots."""
    from serving.options import ServingOptions

    environ = os.environ if environ is None else environ
    notices = []
    admin = args.get("token_env", ServingOptions.token_env)
    if not (args.get("token") or (admin and environ.get(admin))):
        notices.append(f"edits are off: no admin token (set {admin or 'token_env'} before "
                       f"`vmem serve` to turn them on)")
    if not args.get("allowed_source_roots"):
        notices.append("thumbnails are off: no allowed source root (--allow-source-root DIR)")
    return notices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmem serve", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--memory", "-m", help="ROOT of the visual memory (overrides the config).")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="Serve config file (YAML), or a KubeRay RayService manifest.")
    parser.add_argument("--host", default=None, help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=port_number, default=None, help="HTTP port (default 8000).")
    parser.add_argument("--data-plane-port", type=port_number, default=None,
                        help="Port of the direct data plane: every Router replica serves the API "
                             "there itself, without Serve's proxy (default 8001 from the config; "
                             "0 = off).")
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="Join this Ray cluster ('auto': the one this machine belongs to) "
                             "instead of starting a new local instance (default: $RAY_ADDRESS "
                             "when set; otherwise a new instance, even if one runs here).")
    parser.add_argument("--allow-source-root", action="append", default=[], metavar="ROOT",
                        help="A URL prefix or absolute directory the items' sources may be read "
                             "from, for thumbnails and re-ranking (repeatable; added to the "
                             "config's allowed_source_roots, empty by default: no source is read). "
                             "E.g. the folder a memory was ingested from: --allow-source-root "
                             "\"$PWD/data\".")
    parser.add_argument("--check", action="store_true",
                        help="Validate the config (Serve's schema, the options, the deployment "
                             "names) and exit: no Ray, no memory read.")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    config = load_config(args.config, args.memory, args.host, args.port,
                         data_plane_port=args.data_plane_port)
    served = add_source_roots(config, args.allow_source_root)
    if args.check:
        for name, checked in check_config(config, deploy=is_rayservice(args.config)).items():
            unused = (f"; not built with these options (vmem serve ignores them, serve deploy "
                      f"refuses them): {', '.join(checked['unused'])}") if checked["unused"] else ""
            print(f"{args.config}: application {name!r} is valid (deployments: "
                  f"{', '.join(checked['deployments']) or 'defaults'}{unused})", flush=True)
        return 0
    check_config(config)  # options (a relative source root...) refused before Ray starts
    if not args.ray_address:  # a joined cluster's nodes, not this machine, read the memory
        check_ports_free(config)
        check_memory(served.get("memory"), served.get("version") or None)
    connect(args.ray_address)
    # From here a stop (Ctrl-C, or SIGTERM as Ctrl-C: it interrupts the deploy too) takes the
    # application down: Ray's own SIGTERM handler (set by ray.init) would exit and leave it
    # running on a cluster joined with --ray-address.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start(config, args.ray_address)
        http = config["http_options"]
        print(f"serving {served['memory']} on http://{http['host']}:{http['port']} (OpenAPI at "
              f"/docs)", flush=True)
        if served.get("data_plane_port"):
            print(f"direct data plane (same API, no proxy hop) on "
                  f"http://{served.get('data_plane_host', '127.0.0.1')}:{served['data_plane_port']}",
                  flush=True)
        for notice in [] if args.ray_address else access_notices(served):
            print(notice, flush=True)  # (a joined cluster's nodes may hold the tokens)
        print("Ctrl-C stops", flush=True)
        threading.Event().wait()  # until interrupted
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop a foreground server
        logging.getLogger("vmem.serve").info("interrupted: shutting the application down")
    finally:
        take_down(config["applications"][0]["name"], joined=bool(args.ray_address))
    return 0


def take_down(name: str, joined: bool) -> None:
    """Stop what ``vmem serve`` started: its application (its replicas stop gracefully and
    give up their leases; other applications on a cluster it joined keep serving; one of the
    same name was replaced by it), then its own local instance (``ray.shutdown()``: Serve's
    controller and proxy, and the proxy's port, go with it; ``serve.shutdown()`` would only
    add Ray's "graceful_shutdown failed ... will be retried" line for the controller it
    kills), and last the data-plane claims its replicas left on this machine
    (``serving.data_plane.release_claims``). Nothing to delete when Serve never started (a
    failed start: its own error is the one reported)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from serving.data_plane import release_claims

    def delete() -> None:
        try:
            serve.delete(name)
        except RayServeException as error:  # no Serve instance: nothing was deployed
            logging.getLogger("vmem.serve").info("nothing to take down: %s", error)

    # A Ctrl-C in a terminal reaches the whole process group, the local instance's raylet
    # included, and ``serve.delete`` then waits for ever: bounded, as ``serve.shutdown`` is
    deleting = threading.Thread(target=delete, name="take-down", daemon=True)
    deleting.start()
    deleting.join(TAKE_DOWN_TIMEOUT_S)
    if deleting.is_alive():
        logging.getLogger("vmem.serve").warning(
            "application %r not deleted within %.0f s (its Ray node stopped?): exiting", name,
            TAKE_DOWN_TIMEOUT_S)
    elif not joined:
        if ray.is_initialized():
            ray.shutdown()
        release_claims(name)  # the replicas ran here, and are gone with the local instance


if __name__ == "__main__":
    from indexer import program

    program.run(main)
