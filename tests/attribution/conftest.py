"""Attribution fixtures: the factory's tiny model and the `people` datanet of two contributors."""

from tests.datanets.conftest import world  # noqa: F401 - re-exported fixture
from tests.factory.conftest import people, tiny_model  # noqa: F401 - re-exported fixtures
