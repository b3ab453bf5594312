"""Module-level Powertools singletons. Metrics carry dimensions model and version only, never tenant
(tenant ids are unbounded cardinality and would be a cost and privacy problem); logs carry the tenant."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "tenantml"
NAMESPACE = "tenantml"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)
