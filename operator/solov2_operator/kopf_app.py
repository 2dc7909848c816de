"""For ``kopf run -m solov2_operator.kopf_app``: registers the handlers on kopf's default registry
(with default settings; the ``solov2-operator`` command adds its metrics endpoint)."""

import kopf

from .handlers import register

config = register(kopf.get_default_registry())
