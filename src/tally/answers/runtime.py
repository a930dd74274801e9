"""The runtime: everything a running Tally holds, built once at start and passed down.

`tally serve` builds one for the app's lifetime, each CLI command that answers builds one for the command, and
tests build one around their own engine. Library code takes what it needs from it as arguments; nothing is
cached in modules or filled in lazily by request handlers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tally.answers.ratelimit import RateLimiter
from tally.config import Settings
from tally.ledger import Ledger, open_ledger
from tally.store import Store, open_store

if TYPE_CHECKING:
    from tally.attribution.service import Attributor
    from tally.chain.anchorer import Anchorer
    from tally.chain.client import Chain
    from tally.datanets.contribute import NearDups
    from tally.engine import Engine
    from tally.factory.jobs import JobQueue
    from tally.rag.embed import Embedders
    from tally.rag.index import IndexCache
    from tally.rewards import FeePolicy
    from tally.rewards.credits import CreditHolds

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    ledger: Ledger
    fee_policy: FeePolicy
    engine: Engine | None = None  # None: this process serves no inference (the inference routes answer 503)
    attributor: Attributor | None = None  # None: attribution is off (no base model to measure with)
    jobs: JobQueue = field(init=False, repr=False)  # fine-tuning jobs: queued in the database, run by workers
    near_dups: NearDups = field(init=False, repr=False)  # the near-duplicate signer, kept across uploads
    embedders: Embedders = field(init=False, repr=False)  # RAG sentence embedders, each loaded on first use
    rag_indexes: IndexCache = field(init=False, repr=False)  # loaded RAG indexes, kept until they change on disk
    rate_limiter: RateLimiter = field(init=False, repr=False)  # per-caller token buckets (server.rate_limit_*)
    credit_holds: CreditHolds = field(init=False, repr=False)  # credit set aside for paid answers in progress
    chain: Chain | None = field(init=False, repr=False)  # None: chain.enabled is false
    anchorer: Anchorer | None = field(default=None, init=False, repr=False)  # the server's periodic anchorer
    owns_store: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        from tally.datanets.contribute import NearDups
        from tally.factory.jobs import JobQueue
        from tally.rag.embed import Embedders
        from tally.rag.index import IndexCache
        from tally.rewards.credits import CreditHolds

        self.jobs = JobQueue(self.settings, self.ledger)
        self.near_dups = NearDups()
        self.embedders = Embedders()
        self.rag_indexes = IndexCache()
        server = self.settings.server
        self.rate_limiter = RateLimiter(server.rate_limit_per_minute, server.rate_limit_burst)
        self.credit_holds = CreditHolds()
        self.chain = None
        if self.settings.chain.enabled:
            from tally.chain.client import Chain

            self.chain = Chain(self.settings, self.store)

    def start(self, *, anchoring: bool = False) -> Runtime:
        """Start the engine and, with `anchoring` (the server) and the chain on, the periodic anchorer."""
        if self.engine is not None:
            self.engine.start()
        if anchoring and self.chain is not None:
            from tally.chain.anchorer import Anchorer

            self.anchorer = Anchorer(self.chain, self.ledger).start()
        return self

    def close(self) -> None:
        if self.anchorer is not None:
            self.anchorer.stop()
        self.jobs.close()
        if self.engine is not None:
            self.engine.stop()
        if self.owns_store:
            self.store.dispose()


def build_runtime(
    settings: Settings,
    *,
    with_engine: bool = False,
    engine: Engine | None = None,
    model_dir: Path | None = None,
    store: Store | None = None,
) -> Runtime:
    """Open the store and ledger, read the fee policy (a bad file stops the start, not an answer) and, with
    `with_engine` or a given `engine`, the engine and the attributor. A base model that is not pulled leaves the
    engine off with a warning: everything else still serves."""
    from tally.rewards import effective_policy

    fee_policy, _ = effective_policy(settings)
    own = store is None
    store = store or open_store(settings)
    runtime = Runtime(settings, store, open_ledger(settings, store), fee_policy, owns_store=own)
    if engine is None and with_engine:
        from tally.engine import build_engine
        from tally.models import ModelError

        try:
            # `fast` attribution's query starts from the hidden states entering its top layers, kept by the engine
            engine = build_engine(settings, states_from_top=settings.attribution.fast_gradient_layers)
        except ModelError as exc:
            logger.warning("inference engine not started: %s", exc)
    if engine is not None:
        runtime.engine = engine
        runtime.attributor = _attributor(settings, store, engine.model_name, model_dir)
    return runtime


def _attributor(settings: Settings, store: Store, model_name: str, model_dir: Path | None) -> Attributor | None:
    from tally.attribution.service import Attributor
    from tally.models import ModelError, resolve_model

    if model_dir is None:
        try:
            model_dir = resolve_model(model_name, settings.models.cache_dir)
        except ModelError as exc:
            logger.warning("attribution off: %s", exc)
            return None
    return Attributor(settings, store, model_dir, model_name)
