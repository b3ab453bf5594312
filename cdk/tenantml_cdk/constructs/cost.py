"""Cost per 1000 inferences on AWS: a saved CloudWatch Logs Insights query on the inference function's log
group (Logs Insights > Queries > Saved, `tenantml-<stage>/cost-per-1000-inferences`; pick a time range and
run it).

Its text is generated from `tenantml.monitoring.cost`, the same definition `tenantml cost` aggregates with,
so the console and the CLI agree on the figure. The prices written into it are the list prices of
`tenantml.settings.CostSettings` (its defaults) for the stack's `architecture`; `tenantml cost` can price
with others (TENANTML_COST_*)."""

from __future__ import annotations

from aws_cdk import aws_logs as logs
from constructs import Construct

from tenantml.monitoring import cost
from tenantml.settings import CostSettings
from tenantml_cdk.constructs.functions import PlatformFunction


def query_name(stage: str) -> str:
    return f"tenantml-{stage}/{cost.QUERY_NAME}"


class CostQuery(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, function: PlatformFunction, architecture: str,
                 stage: str) -> None:
        super().__init__(scope, construct_id)
        self.prices = cost.Prices.from_settings(CostSettings(), architecture)
        parts = cost.query_parts(self.prices)
        self.query = logs.QueryDefinition(
            self, "CostPer1000Inferences",
            query_definition_name=query_name(stage),
            query_string=logs.QueryString(fields=parts["fields"],
                                          filter_statements=parts["filter_statements"],
                                          stats_statements=[parts["stats"]], sort=parts["sort"]),
            log_groups=[function.log_group],
        )
