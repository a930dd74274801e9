"""The one answer path and the runtime it runs in. The API, the studio and the CLI answer through here only.

runtime = build_runtime(settings, with_engine=True).start()
result = answer(runtime, AnswerRequest(model="my-adapter", messages=[{"role": "user", "content": "Hi"}]))
"""

from tally.answers.events import load_event_types
from tally.answers.policy import (
    RULE_NAMES,
    Declared,
    PolicyError,
    Rule,
    RuleName,
    decide,
    is_address_of,
    make_rule,
    may_read_record,
    needs_caller,
)
from tally.answers.request import AnswerRequest, AnswerResult, Delta, Generated, Prepared, RagOption, Sampling
from tally.answers.runtime import Runtime, build_runtime
from tally.answers.service import (
    AnswerError,
    answer,
    answer_async,
    answer_batch_async,
    engine_of,
    finish,
    generate,
    precheck,
    prepare,
    resolve_mode,
    stream,
)

__all__ = [
    "RULE_NAMES",
    "AnswerError",
    "AnswerRequest",
    "AnswerResult",
    "Declared",
    "Delta",
    "Generated",
    "PolicyError",
    "Prepared",
    "RagOption",
    "Rule",
    "RuleName",
    "Runtime",
    "Sampling",
    "answer",
    "answer_async",
    "answer_batch_async",
    "build_runtime",
    "decide",
    "engine_of",
    "finish",
    "generate",
    "is_address_of",
    "load_event_types",
    "make_rule",
    "may_read_record",
    "needs_caller",
    "precheck",
    "prepare",
    "resolve_mode",
    "stream",
]
