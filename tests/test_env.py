import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_str


def test_required_variable_missing_names_it(monkeypatch):
    monkeypatch.delenv("WARDEN_SOMETHING", raising=False)

    with pytest.raises(ImproperlyConfigured, match=r"^WARDEN_SOMETHING is not set"):
        env_str("WARDEN_SOMETHING")


def test_blank_counts_as_unset(monkeypatch):
    monkeypatch.setenv("WARDEN_SOMETHING", "   ")

    assert env_str("WARDEN_SOMETHING", "fallback") == "fallback"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("ON", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("WARDEN_FLAG", raw)

    assert env_bool("WARDEN_FLAG", not expected) is expected


def test_bool_rejects_other_words_naming_the_variable(monkeypatch):
    monkeypatch.setenv("WARDEN_FLAG", "maybe")

    with pytest.raises(ImproperlyConfigured, match=r"^WARDEN_FLAG must be true or false.*'maybe'"):
        env_bool("WARDEN_FLAG", False)


def test_int_parses_and_checks_minimum(monkeypatch):
    monkeypatch.setenv("PORT", "8042")
    assert env_int("PORT", 8000, minimum=1) == 8042

    monkeypatch.setenv("PORT", "0")
    with pytest.raises(ImproperlyConfigured, match=r"^PORT must be at least 1, got 0"):
        env_int("PORT", 8000, minimum=1)

    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ImproperlyConfigured, match=r"^PORT must be a whole number"):
        env_int("PORT", 8000)


def test_list_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS", " warden.example.com, ,api.example.com ")

    assert env_list("ALLOWED_HOSTS", []) == ["warden.example.com", "api.example.com"]


def test_float_reads_a_number_within_its_bounds(monkeypatch):
    from config.env import env_float

    monkeypatch.setenv("WARDEN_RATIO", "0.25")
    assert env_float("WARDEN_RATIO", 1.0, minimum=0, maximum=1) == 0.25
    monkeypatch.delenv("WARDEN_RATIO")
    assert env_float("WARDEN_RATIO", 1.0, minimum=0, maximum=1) == 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a quarter", r"^WARDEN_RATIO must be a number, got 'a quarter'"),
        ("-0.5", r"^WARDEN_RATIO must be at least 0, got -0.5"),
        ("nan", r"^WARDEN_RATIO must be at least 0, got nan"),
        ("1.5", r"^WARDEN_RATIO must be at most 1, got 1.5"),
    ],
)
def test_float_refuses_what_is_not_a_number_in_bounds_naming_the_variable(
    monkeypatch, raw, message
):
    from config.env import env_float

    monkeypatch.setenv("WARDEN_RATIO", raw)

    with pytest.raises(ImproperlyConfigured, match=message):
        env_float("WARDEN_RATIO", 0.5, minimum=0, maximum=1)
