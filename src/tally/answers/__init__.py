"""The one answer path and the runtime it runs in. The API, the studio and the CLI answer through here only.

runtime = build_runtime(settings, with_engine=True).start()
result = answer(runtime, AnswerRequest(model="my-adapter", messages=[{"role": "user", "content": "Hi"}]))
"""

from tally.answers.events import load_event_types
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
    "AnswerError",
    "AnswerRequest",
    "AnswerResult",
    "Delta",
    "Generated",
    "Prepared",
    "RagOption",
    "Runtime",
    "Sampling",
    "answer",
    "answer_async",
    "answer_batch_async",
    "build_runtime",
    "engine_of",
    "finish",
    "generate",
    "load_event_types",
    "precheck",
    "prepare",
    "resolve_mode",
    "stream",
]
