"""The clients over real TLS: the simulator serves HTTPS with a test CA's certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from dskit import APIConnectionError, AsyncDeepSeek, DeepSeek
from dskit.sim import SimServer

from .conftest import FakeClock, faults_once


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_sim(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    with SimServer(
        ssl_certfile=str(folder / "cert.pem"), ssl_keyfile=str(folder / "key.pem")
    ) as server:
        yield server


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_sync_client_streams_and_resumes_over_tls(tls_sim: SimServer, ca: trustme.CA) -> None:
    assert tls_sim.base_url.startswith("https://")
    with DeepSeek("sk-tls-000000", base_url=tls_sim.base_url, verify=_trusting(ca)) as client:
        unbroken = client.chat("over tls")
        resumed = client.chat("over tls", extra_headers=faults_once(Drop_After_Events=4))
    assert resumed.content == unbroken.content and resumed.resumes == 1


async def test_async_client_streams_and_resumes_over_tls(
    tls_sim: SimServer, ca: trustme.CA
) -> None:
    async with AsyncDeepSeek(
        "sk-tls-000000", base_url=tls_sim.base_url, verify=_trusting(ca)
    ) as client:
        unbroken = await client.chat("async over tls")
        resumed = await client.chat(
            "async over tls", extra_headers=faults_once(Drop_After_Events=6)
        )
        many = [
            await client.chat(f"q{i}", max_tokens=5, thinking=False) for i in range(5)
        ]  # pooled reuse
    assert resumed.content == unbroken.content and resumed.resumes == 1
    assert all(r.finish_reason == "length" for r in many)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_untrusted_certificate_is_refused_at_once(
    tls_sim: SimServer, asynchronous: bool
) -> None:
    clock = FakeClock()  # records any backoff: a certificate failure is never retried
    kwargs: dict[str, Any] = {"base_url": tls_sim.base_url, "clock": clock}
    if asynchronous:
        async with AsyncDeepSeek("sk-tls-000000", **kwargs) as aclient:
            with pytest.raises(APIConnectionError, match=r"(?i)certificate|ssl"):
                await aclient.chat("hi")
    else:
        with DeepSeek("sk-tls-000000", **kwargs) as client:
            with pytest.raises(APIConnectionError, match=r"(?i)certificate|ssl"):
                client.chat("hi")
    assert clock.sleeps == []
