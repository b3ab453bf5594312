"""Cost per 1000 inferences on AWS: the saved Logs Insights query (constructs/cost.py) is the query text
generated from tenantml.monitoring.cost (the definition `tenantml cost` aggregates with), with the list
prices of the stack's architecture, on the inference function's log group; the stack outputs that group."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Template
from infra_helpers import refs, resources_of
from tenantml_cdk.application import STATELESS_STACK
from tenantml_cdk.constructs.cost import CostQuery
from tenantml_cdk.constructs.functions import PlatformFunction

from tenantml import resources
from tenantml.monitoring import cost
from tenantml.settings import CostSettings


def test_the_saved_query_is_generated_from_the_definition_on_the_inference_log_group(synth):
    template = synth.templates[STATELESS_STACK]
    (query,) = resources_of(template, "AWS::Logs::QueryDefinition").values()
    props = query["Properties"]
    prices = cost.Prices.from_settings(CostSettings(), synth.config.architecture)
    assert props["QueryString"] == cost.insights_query(prices)
    assert props["Name"] == f"tenantml-{synth.config.stage}/cost-per-1000-inferences"

    inference = template["Resources"]["InferenceFunction"]["Properties"]
    (log_group,) = refs(inference["LoggingConfig"]["LogGroup"])
    assert template["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"
    assert [refs(name) for name in props["LogGroupNames"]] == [{log_group}]
    assert refs(template["Outputs"]["InferenceLogGroupName"]["Value"]) == {log_group}


def test_the_query_prices_the_stacks_architecture():
    stack = cdk.Stack(cdk.App(), "CostTest")
    group = logs.LogGroup(stack, "InferenceLogs")
    function = PlatformFunction(definition=resources.function("inference"), function=None,  # type: ignore[arg-type]
                                role=None, log_group=group)  # type: ignore[arg-type]
    CostQuery(stack, "Cost", function=function, architecture="arm64", stage="prod")
    (query,) = resources_of(Template.from_stack(stack).to_json(), "AWS::Logs::QueryDefinition").values()
    arm = cost.Prices.from_settings(CostSettings(), "arm64")
    assert query["Properties"]["QueryString"] == cost.insights_query(arm)
    assert "* 0.0000133334) + 0.0000002 as cost_usd" in query["Properties"]["QueryString"]
    assert query["Properties"]["Name"] == "tenantml-prod/cost-per-1000-inferences"
