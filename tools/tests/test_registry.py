"""The tool registry: contracts validated on save with the path of the error, per-kind
configuration checked by the kind's executor, versions, the Python functions' rows, and the
invocation path shared by every kind."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from tools.models import Approval, InvocationStatus, RiskTier, Tool, ToolInvocation
from tools.registry import PYTHON_FUNCTIONS, ToolContext, python_tool, python_tools_sync
from tools.secrets import secret_set
from tools.services import tool_invoke, truncated

pytestmark = pytest.mark.django_db

OBJECT = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}


def problems(*, parameters=OBJECT, config=None) -> dict:
    """The validation errors of an HTTP tool with these parameters and configuration."""
    config = config or {"method": "GET", "url": "https://crm.example.com/{id}"}
    tool = Tool(name="lookup", description="d", kind="http", parameters=parameters, config=config)
    with pytest.raises(ValidationError) as refused:
        tool.full_clean()
    return refused.value.message_dict


def test_an_invalid_schema_is_refused_with_the_path_of_the_error():
    assert problems(parameters={"type": "object", "properties": {"n": {"type": "integr"}}})[
        "parameters"
    ] == [
        "Not a valid JSON Schema at /properties/n/type: 'integr' is not valid under any of "
        "the given schemas"
    ]
    assert problems(parameters={"type": "array"})["parameters"] == [
        'The top level must be {"type": "object", ...}: tools take named arguments.'
    ]
    assert "JSON Schema object" in problems(parameters=["id"])["parameters"][0]


def test_names_are_what_models_accept():
    tool = Tool(name="look up", description="d", kind="python", config={"function": "x"})
    with pytest.raises(ValidationError) as refused:
        tool.full_clean()
    assert "letters, digits, underscores or hyphens" in refused.value.message_dict["name"][0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"method": "GET"}, "Invalid configuration at the top level: 'url' is a required"),
        ({"method": "FETCH", "url": "https://x.example/"}, "Invalid configuration at /method"),
        ({"method": "GET", "url": "ftp://x.example/"}, "Invalid configuration at /url"),
        (
            {"method": "GET", "url": "https://x.example/{customer}"},
            "The URL's {customer} must be a required argument of the tool",
        ),
        (
            {"method": "GET", "url": "https://x.example/{id}", "allow_networks": ["10.0.0.300"]},
            "The allowed network '10.0.0.300' is not an address or network",
        ),
        (
            {"method": "GET", "url": "https://x.example/{id}", "auth": {"secret": "nope"}},
            "Invalid configuration at /auth: 'scheme' is a required property",
        ),
        (
            {
                "method": "GET",
                "url": "https://x.example/{id}",
                "auth": {"secret": "nope", "scheme": "bearer"},
            },
            "There is no secret named 'nope'",
        ),
    ],
)
def test_an_http_configuration_is_checked_by_its_executor(config, message):
    assert problems(config=config)["config"][0].startswith(message)


def test_python_and_mcp_configurations():
    python = Tool(name="p", description="d", kind="python", config={"function": "nope"})
    mcp = Tool(name="m", description="d", kind="mcp", config={})
    with pytest.raises(ValidationError) as bad_python:
        python.full_clean()
    with pytest.raises(ValidationError) as bad_mcp:
        mcp.full_clean()
    assert "No Python function 'nope' is registered (known: " in str(bad_python.value)
    assert "An MCP tool belongs to an MCP server." in bad_mcp.value.message_dict["mcp_server"]


def test_the_version_hashes_contract_and_configuration_not_the_description():
    secret_set(name="k", value="v", actor=None)
    tool = Tool.objects.create(
        name="lookup",
        description="one",
        kind="http",
        parameters=OBJECT,
        config={"method": "GET", "url": "https://crm.example.com/{id}"},
    )
    first = tool.version
    tool.description = "two"
    tool.save()
    described = tool.version
    tool.config = {**tool.config, "auth": {"secret": "k", "scheme": "bearer"}}
    tool.save(update_fields=["config"])

    assert len(first) == 16
    assert described == first
    assert tool.version != first
    assert Tool.objects.get(pk=tool.pk).version == tool.version


def test_approval_defaults_from_the_risk_tier():
    def needs(risk, approval=Approval.TIER):
        return Tool(risk=risk, approval=approval).requires_approval

    assert [needs(RiskTier.READ), needs(RiskTier.WRITE), needs(RiskTier.CRITICAL)] == [
        False,
        True,
        True,
    ]
    assert needs(RiskTier.READ, Approval.ALWAYS)
    assert not needs(RiskTier.WRITE, Approval.NEVER)
    assert needs(RiskTier.CRITICAL, Approval.NEVER)  # "never" does not reach critical tools


@pytest.fixture
def registered():
    """A Python function registered for one test only."""
    names = []

    def register(name, description="Count things.", **options):
        python_tool(name=name, description=description, parameters=OBJECT, **options)(
            lambda arguments, *, idempotency_key: {"id": arguments["id"]}
        )
        names.append(name)

    yield register
    for name in names:
        PYTHON_FUNCTIONS.pop(name, None)


def test_registered_functions_get_rows_that_arrive_disabled_and_keep_admin_choices(registered):
    assert Tool.objects.get(name="create_ticket").risk == RiskTier.WRITE  # since migrate
    registered("count_things", risk="write")
    python_tools_sync()
    row = Tool.objects.get(name="count_things")
    assert (row.kind, row.enabled, row.risk, row.config) == (
        "python",
        False,
        "write",
        {"function": "count_things"},
    )

    Tool.objects.filter(pk=row.pk).update(enabled=True, risk=RiskTier.CRITICAL, rate_limit=5)
    PYTHON_FUNCTIONS.pop("count_things")
    registered("count_things", description="Count things, faster.")
    python_tools_sync()

    row.refresh_from_db()
    assert row.description == "Count things, faster."
    assert (row.enabled, row.risk, row.rate_limit) == (True, RiskTier.CRITICAL, 5)


def test_a_python_name_taken_by_another_kind_is_left_alone(registered):
    Tool.objects.create(
        name="lookup_order",
        description="the ERP's",
        kind="http",
        parameters=OBJECT,
        config={"method": "GET", "url": "https://erp.example.com/{id}"},
    )
    registered("lookup_order")

    python_tools_sync()

    assert list(Tool.objects.filter(name="lookup_order").values_list("kind", flat=True)) == ["http"]


def test_a_failing_python_tool_rolls_its_effect_back_and_reports_a_structured_error(registered):
    from tools.models import DemoTicket

    def explode(arguments, *, idempotency_key):
        DemoTicket.objects.create(title="half done", priority="low", idempotency_key="x")
        raise RuntimeError("connection string postgres://admin:hunter2@db")

    python_tool(name="explode", description="d", parameters=OBJECT, risk="write")(explode)
    try:
        python_tools_sync()
        tool = Tool.objects.get(name="explode")
        tool.enabled = True
        tool.save()
        user = get_user_model().objects.create_user("u")
        outcome = tool_invoke(
            tool=tool, arguments={"id": "1"}, key="k:1", context=ToolContext(actor=user)
        )
    finally:
        PYTHON_FUNCTIONS.pop("explode")

    assert outcome.result == {
        "error": {"type": "failed", "message": "the tool explode failed (an internal error)"}
    }
    assert not DemoTicket.objects.exists()  # rolled back with the call
    row = ToolInvocation.objects.get(key="k:1")
    assert (row.status, row.error) == (InvocationStatus.FAILED, "failed")
    assert "hunter2" not in str(row.result)


def test_invalid_arguments_and_disabled_tools_run_nothing():
    tool = Tool.objects.get(name="create_ticket")
    user = get_user_model().objects.create_user("u")
    context = ToolContext(actor=user)

    disabled = tool_invoke(tool=tool, arguments={"title": "x"}, key="k:2", context=context)
    tool.enabled = True
    invalid = tool_invoke(tool=tool, arguments={"title": 5}, key="k:3", context=context)
    # a model's arguments holding text no table keeps: an invalid call, not a failed run
    unkept = tool_invoke(tool=tool, arguments={"title": "\ud800"}, key="k:4", context=context)

    assert disabled.result["error"] == {
        "type": "unavailable",
        "message": "the tool 'create_ticket' is disabled",
    }
    assert invalid.result["error"] == {
        "type": "invalid_arguments",
        "message": "invalid arguments at /title: 5 is not of type 'string'",
    }
    assert unkept.result["error"] == {
        "type": "invalid_arguments",
        "message": "invalid arguments at title: contains an unpaired surrogate, which is not text",
    }
    assert not ToolInvocation.objects.exists()


def test_truncation_marks_what_it_cut():
    assert truncated({"a": 1}, 100) == {"a": 1}
    assert truncated("x" * 150, 100) == {
        "truncated": True,
        "content": "x" * 100,
        "note": "the result was cut to 100 of its 150 characters",
    }
