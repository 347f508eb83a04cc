import pytest
from tiny import tiny_tokenizer


@pytest.fixture
def tok():
    return tiny_tokenizer()
