"""Redis URLs: every spelling of a password is masked in messages, and works for redis-py and kombu."""

from __future__ import annotations

import pytest
import redis
from kombu.utils.url import parse_url as kombu_parse_url
from redis.connection import parse_url as redis_parse_url

from kandinsky_batch.broker import make_celery
from kandinsky_batch.redis_client import describe, normalized, redact
from kandinsky_batch.settings import Settings

SECRET = "s3cr%2Ft+p@ss"  # as written in a URL: percent-encoded '/', a '+' and an '@'


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://default:hunter2@redis:6379/0", "redis://***@redis:6379/0"),
        (
            "rediss://:hunter2@redis:6380/1?ssl_cert_reqs=required",
            "rediss://***@redis:6380/1?ssl_cert_reqs=required",
        ),
        ("redis://:hun%40ter%2F2@redis/0", "redis://***@redis/0"),
        ("redis://redis:6379/0?password=hunter2", "redis://redis:6379/0?password=***"),
        (
            "rediss://redis/0?ssl_ca_certs=/ca.pem&PASSWORD=hunter2",
            "rediss://redis/0?ssl_ca_certs=/ca.pem&PASSWORD=***",
        ),
        ("redis://redis/0?username=alice&Password=hun%26ter2", "redis://redis/0?username=***&Password=***"),
        ("redis://redis/0?pass%77ord=hunter2", "redis://redis/0?pass%77ord=***"),
        ("redis://redis/0?password=hun@ter2", "redis://redis/0?password=***"),
        # an unencoded '/', '?' or '#' in the password: whatever a parser makes of it, hidden
        ("redis://:hun/ter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://:hun?ter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://:hun#ter2@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://redis:6379/0#hunter2", "redis://redis:6379/0#***"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_every_spelling_of_a_password_is_masked(url: str, shown: str) -> None:
    assert redact(url) == shown
    error = describe(redis.AuthenticationError("WRONGPASS"), url)
    assert "hun" not in error and "ter2" not in error and shown in error


@pytest.mark.parametrize(
    "url",
    [
        f"redis://127.0.0.1:6390/2?password={SECRET}",
        f"redis://127.0.0.1:6390/2?socket_timeout=3&Password={SECRET}&health_check_interval=5",
        f"rediss://127.0.0.1:6390/2?ssl_cert_reqs=required&password={SECRET}",
        f"redis://:{SECRET}@127.0.0.1:6390/2",
        f"redis://:{SECRET}@127.0.0.1:6390/2?password=ignored",  # the userinfo wins, as in redis-py
    ],
)
def test_a_query_password_moves_into_the_userinfo_where_redis_py_and_kombu_both_read_it(url: str) -> None:
    password = "s3cr/t p@ss"  # SECRET decoded as a query value ('+' is a space there)
    if "@127" in url:
        password = "s3cr/t+p@ss"  # ... and as userinfo ('+' is itself)
    form = normalized(url)
    assert "password" not in form.lower().partition("?")[2]
    assert redis_parse_url(form)["password"] == password
    parsed = kombu_parse_url(form)  # kombu raises TypeError on a `?password=` of its own
    assert (parsed["password"], parsed["hostname"], parsed["port"], parsed["virtual_host"]) == (
        password,
        "127.0.0.1",
        6390,
        "2",
    )
    assert normalized(form) == form


def test_the_celery_broker_takes_a_query_password_and_shows_it_masked() -> None:
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6390/0?password=hunter2"))
    connection = app.connection_for_write()
    assert connection.password == "hunter2" and connection.hostname == "127.0.0.1"
    assert "hunter2" not in connection.as_uri()


def test_a_username_without_query_credentials_is_left_as_is() -> None:
    url = "redis://alice:pw@127.0.0.1:6390/0?db=3"
    assert normalized(url) == url
    assert normalized("unix:///run/redis.sock?password=pw") == "unix:///run/redis.sock?password=pw"
