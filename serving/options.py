"""Serving options: what a Serve config file's ``args`` may set, validated once at build time."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from serving.aggregation import AGGREGATORS

MAX_K = 1000  # neighbours one query may ask for: the API's default max_k, `vmem classify --k`'s limit


@dataclass
class ServingOptions:
    memory: str  # ROOT of the visual memory
    version: str = ""  # "" = LATEST
    token: str = ""  # admin bearer token (edits, reload); "" = read token_env
    token_env: str = "VMEM_TOKEN"
    read_token: str = ""  # read-only bearer token for queries; "" = read read_token_env
    read_token_env: str = "VMEM_READ_TOKEN"  # neither set: queries need no token
    allowed_source_roots: list[str] = field(default_factory=list)  # URL prefixes an item's
    # `source` may point to (pipelines/sources/policy.py); empty: only "" and "api:<key>"
    default_k: int = 100  # method.md: k = 100 is a safe default for RankVoting
    max_k: int = MAX_K
    default_aggregator: str = "rank"
    unknown_below: float = 0.0  # answer "unknown" when the winner's vote share is lower
    default_rerank: str = ""  # "" = vote in retrieval order; "prototype" = serving/rerank.py
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch: int = 256  # queries per batch request
    searcher_groups: int = 1  # searcher deployments (shard s in group s mod G); 0 = in the router
    searcher_omp_threads: int = 0  # FAISS threads per searcher replica; 0 = Ray's default
    shard_timeout_s: float = 10.0  # one searcher-group call at most
    shard_retries: int = 1
    request_deadline_s: float = 5.0  # the whole search fan-out, retries included
    max_inflight_requests: int = 64  # per router replica; past it: 503 + Retry-After at once
    version_poll_s: float = 0.02  # replicas read LATEST this often (serving/follower.py)
    max_staleness_s: float = 2.0  # a replica re-reads LATEST before answering past this
    lease_ttl_s: float = 10.0  # replica leases (indexer/leases.py); > max_staleness_s
    min_version_wait_s: float = 2.0  # a query's min_version: wait this long, then 503
    reload_timeout_s: float = 60.0  # loading one version at most
    confirm_timeout_s: float = 12.0  # an edit waits this long for every replica (> lease_ttl_s)
    encoder_weights: str = ""  # override the encoder weights location
    embeddings_only: bool = False  # no encoder deployment: clients send embeddings
    device: str = "auto"
    data_plane_host: str = "127.0.0.1"  # serving/data_plane.py: each Router replica's own HTTP
    data_plane_port: int = 0  # server (no proxy, no actor hop); 0 = off. Replicas on a node share it

    @classmethod
    def from_args(cls, args: dict) -> "ServingOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown serving option(s) {sorted(unknown)}; known: {sorted(known)}")
        if "memory" not in args:
            raise ValueError("memory: the ROOT of the visual memory is required")
        for name, value in args.items():  # YAML gives "100" for a quoted number: name the option
            kind = _KINDS[name]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{name} must be {_field_types[name]}, not "
                                 f"{type(value).__name__} {value!r}")
        options = cls(**args)
        if options.default_aggregator not in AGGREGATORS:
            raise ValueError(f"default_aggregator must be one of {AGGREGATORS}")
        if options.default_rerank:
            from serving.rerank import make_reranker

            make_reranker(options.default_rerank)  # an unknown name fails at deploy, not per query
        if options.searcher_groups < 0:
            raise ValueError("searcher_groups must be >= 0 (0: search inside the router)")
        if not 1 <= options.default_k <= options.max_k:
            raise ValueError("default_k must be between 1 and max_k")
        options.source_policy()  # a bad root fails at deploy, not per request
        if not 0 <= options.data_plane_port <= 65535:
            raise ValueError("data_plane_port must be 0 (off) or a TCP port")
        if not options.max_staleness_s < options.lease_ttl_s < options.confirm_timeout_s:
            raise ValueError("need max_staleness_s < lease_ttl_s < confirm_timeout_s: a replica "
                             "whose lease lapsed must re-read LATEST before it answers")
        return options

    def follow(self):
        """The replicas' ``serving.follower.FollowOptions``."""
        from serving.follower import FollowOptions

        return FollowOptions(self.version_poll_s, self.max_staleness_s, self.lease_ttl_s,
                             self.min_version_wait_s, self.reload_timeout_s)

    def resolved_token(self) -> str:
        """The admin token: ``token``, else the environment variable ``token_env`` of the
        process asking (a Serve replica: ``vmem serve`` passes it in the replica's runtime_env;
        ``serve deploy``: the config's runtime_env or the node's environment). "" = none."""
        return self.token or os.environ.get(self.token_env, "")

    def resolved_read_token(self) -> str:
        """The read-only token: ``read_token``, else ``$read_token_env``; "" = none (queries
        are then open)."""
        return self.read_token or os.environ.get(self.read_token_env, "")

    def source_policy(self):
        """The ``pipelines.sources.policy.SourcePolicy`` of ``allowed_source_roots`` (raises
        ValueError for a bad root)."""
        from pipelines.sources.policy import SourcePolicy

        return SourcePolicy(self.allowed_source_roots)


# The type an option's value must have (an int where a float is asked is fine: YAML's 2 is 2.0).
_field_types = {f.name: f.type for f in fields(ServingOptions)}  # annotations, as strings
_KINDS = {name: {"str": str, "int": int, "float": (int, float), "bool": bool, "list[str]": list}[kind]
          for name, kind in _field_types.items()}
