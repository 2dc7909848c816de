"""Loaded next to ``-m solov2_operator.kopf_app`` by ``kopf run`` in the tests: log in to the emulator
at $SOLOV2_TEST_API_URL, and skip kopf's cluster scanning (kmock 0.8 cannot list namespaces)."""

import os
from typing import Any

import kopf


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server=os.environ["SOLOV2_TEST_API_URL"], insecure=True, default_namespace="default"
    )


@kopf.on.startup()
def no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.scanning.disabled = True
