"""The reference docs say what the code does: every setting with its real default
(docs/configuration.md), every command and option of the ``jobqueue`` CLI, every route of the
monitor and every field ``POST /api/jobs`` takes (docs/api.md). Fast: the code is read where
it is (``Settings``, the click command tree, the monitor's Flask URL map), nothing runs live.
"""

from __future__ import annotations

import ast
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from jobqueue.cli import main as cli_main
from jobqueue.config import DEFAULT_BROKER_URL, ENV_PREFIX, Settings
from jobqueue.connectors import CONNECTORS
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT
from tests.helpers import ROOT

DOCS = ROOT / "docs"
#: The docs a user reads for reference (docs/benchmarks.md is a record of runs, not a reference).
REFERENCE_DOCS = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md") if p.name != "benchmarks.md")]
#: The section of docs/configuration.md whose variables the tests read, not ``Settings``.
TESTS_SECTION = "Tests"
#: The section of docs/configuration.md that lists the CLI.
CLI_SECTION = "Command line"

# -- reading markdown ---------------------------------------------------------------------------


def sections(path: Path) -> dict[str, list[str]]:
    """The lines of each ``## `` section of ``path``, by heading (backticks removed)."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip().replace("`", "")
            found[current] = []
        else:
            found.setdefault(current, []).append(line)
    return found


def table_rows(lines: list[str]) -> list[list[str]]:
    """The body rows of every table in ``lines``, each a list of stripped cells."""
    rows = []
    for line in lines:
        if not line.startswith("|") or re.match(r"^\|[-| ]+\|$", line):
            continue
        # A cell may hold a pipe escaped as GitHub's tables want it (`\\|`)
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if cells[0] in ("Variable", "Command", "Package"):  # a header
            continue
        rows.append(cells)
    return rows


def code_spans(text: str) -> Iterator[str]:
    """Every inline code span and every line of a fenced block in ``text``."""
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield line
        else:
            yield from re.findall(r"`([^`]+)`", line)


def first_literal(cell: str) -> str | None:
    """The value a default cell starts with, when it starts with a code span."""
    match = re.match(r"^`([^`]*)`", cell)
    return match.group(1) if match else None


# -- settings -----------------------------------------------------------------------------------


def setting_rows() -> dict[str, tuple[str, str]]:
    """Every variable of docs/configuration.md's tables: ``{variable: (section, default cell)}``;
    a variable listed twice is an error."""
    rows: dict[str, tuple[str, str]] = {}
    for section, lines in sections(DOCS / "configuration.md").items():
        for cells in table_rows(lines):
            variable = first_literal(cells[0])
            if variable is None or not variable.startswith(ENV_PREFIX):
                continue
            assert variable not in rows, f"{variable} is listed twice in docs/configuration.md"
            rows[variable] = (section, cells[1])
    return rows


def real_default(field: str) -> Any:
    return Settings.model_fields[field].get_default(call_default_factory=True)


def _resolved_result_backend(broker_url: str) -> str:
    return Settings(broker_url=broker_url).resolved().result_backend


#: Defaults the table describes in words because they depend on the host or on another setting,
#: each with the check of what the words say.
DESCRIBED_DEFAULTS = {
    "JOBQUEUE_MACHINE_ID": ("the host name", lambda: Settings().resolved().machine_id == socket.gethostname()),
    "JOBQUEUE_RESULT_BACKEND": (
        f"the broker URL on Redis; `{DEFAULT_BROKER_URL}` on RabbitMQ",
        lambda: (_resolved_result_backend("redis://10.1.2.3:6380/4") == "redis://10.1.2.3:6380/4"
                 and _resolved_result_backend("amqp://guest:guest@10.1.2.3:5672//") == DEFAULT_BROKER_URL),
    ),
}


def test_every_setting_has_one_row_and_every_row_outside_tests_is_a_setting():
    # Given the variables of the configuration tables, the tests' own left aside
    documented = {name for name, (section, _) in setting_rows().items() if section != TESTS_SECTION}
    # Then they are exactly the Settings fields, by their environment variables
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert sorted(documented - fields) == [], "documented, but not a setting"
    assert sorted(fields - documented) == [], "a setting without a row in docs/configuration.md"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_the_documented_default_is_the_real_default(field: str):
    # Given a setting's row and its real default
    variable = ENV_PREFIX + field.upper()
    section, cell = setting_rows()[variable]
    default = real_default(field)
    literal = first_literal(cell)
    # Then the row says that default: a literal read the way the variable is read, "empty",
    # "unset", or words whose meaning the code bears out
    if literal is not None:
        parsed = getattr(Settings.from_env({variable: literal}), field)
        assert parsed == default, f"{variable}: documented {literal!r}, real default {default!r}"
    elif cell.startswith("empty"):
        assert default is not None and not default, f"{variable}: documented empty, real default {default!r}"
    elif cell.startswith("unset"):
        assert default is None, f"{variable}: documented unset, real default {default!r}"
    else:
        assert variable in DESCRIBED_DEFAULTS, f"{variable}: default {cell!r} is neither a value nor described"
        words, holds = DESCRIBED_DEFAULTS[variable]
        assert cell == words and default in ("", None)
        assert holds(), f"{variable}: the code does not do what {words!r} says"


def variables_the_tests_read() -> dict[str, str]:
    """``{variable: default}`` of every ``JOBQUEUE_*`` variable the tests read with
    ``os.environ.get(name, default)``, and those ``.ci/run`` reads as ``${NAME:-default}``."""
    found: dict[str, str] = {}
    pattern = re.compile(r'environ\.get\(\s*"(JOBQUEUE_[A-Z0-9_]+)"\s*,\s*"([^"]*)"')
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for name, default in pattern.findall(path.read_text()):
            assert found.get(name, default) == default, f"{name} has two defaults in the tests"
            found[name] = default
    for name, default in re.findall(r"\$\{(JOBQUEUE_[A-Z0-9_]+):-([^}]*)\}", (ROOT / ".ci" / "run").read_text()):
        found[name] = default
    return found


def test_every_variable_the_tests_read_is_documented_with_its_default():
    # Given the variables the tests read, and docs/configuration.md's Tests table
    read = variables_the_tests_read()
    documented = {name: cell for name, (section, cell) in setting_rows().items() if section == TESTS_SECTION}
    # Then the table lists exactly those, none a setting, each with the default the tests use
    assert read, "no JOBQUEUE_* variable found in the tests: the search is broken"
    assert sorted(documented) == sorted(read)
    assert not {name.removeprefix(ENV_PREFIX).lower() for name in read} & set(Settings.model_fields)
    for name, default in read.items():
        assert first_literal(documented[name]) == default, f"{name}: documented {documented[name]!r}, read {default!r}"


def test_the_connectors_variable_names_every_connector():
    # Given the row of JOBQUEUE_CONNECTORS and the connector registry
    row = next(line for line in (DOCS / "configuration.md").read_text().splitlines()
               if line.startswith("| `JOBQUEUE_CONNECTORS`"))
    # Then every service a worker can enable is named there
    assert [service for service in CONNECTORS if f"`{service}`" not in row] == []


# -- the command line ---------------------------------------------------------------------------


def cli_commands() -> dict[str, click.Context]:
    """``{"jobqueue up": <its context>, ...}`` for the group and every command under it, each
    context made as click makes it (settings inherited from the group's)."""
    found: dict[str, click.Context] = {}

    def walk(command: click.Command, path: str, parent: click.Context | None) -> None:
        context = click.Context(command, parent=parent, info_name=path.split()[-1], **command.context_settings)
        found[path] = context
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}", context)

    walk(cli_main, "jobqueue", None)
    return found


def option_names(context: click.Context) -> set[str]:
    """Every spelling of every option the context's command takes, its help option included."""
    names: set[str] = set()
    for param in context.command.get_params(context):
        if isinstance(param, click.Option):
            names.update(param.opts, param.secondary_opts)
    return names


def passes_options_through(context: click.Context) -> bool:
    """True for a command that hands unknown options to another program (``jobqueue worker``)."""
    return context.ignore_unknown_options


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def cli_rows() -> dict[str, tuple[str, str]]:
    """The command table of docs/configuration.md: ``{command path: (command cell, options cell)}``."""
    rows: dict[str, tuple[str, str]] = {}
    for cells in table_rows(sections(DOCS / "configuration.md")[CLI_SECTION]):
        usage = first_literal(cells[0])
        assert usage is not None, f"a command row without a command: {cells[0]!r}"
        path = " ".join(word for word in usage.split() if not word.isupper())
        rows[path] = (usage, cells[1])
    return rows


def test_every_command_is_documented_with_its_arguments_and_options():
    # Given the click command tree and the command table
    commands, rows = cli_commands(), cli_rows()
    # Then each command has a row, and each row is a command
    assert sorted(rows) == sorted(commands)
    for path, context in commands.items():
        usage, options_cell = rows[path]
        command = context.command
        # with its arguments in the usage, as click names them
        arguments = [p.human_readable_name for p in command.params if isinstance(p, click.Argument)]
        assert [a for a in arguments if a not in usage] == [], f"{path}: arguments missing from {usage!r}"
        # and its options, no more, no fewer (the help option is documented once, on the group)
        documented = {name for span in re.findall(r"`([^`]+)`", options_cell) for name in OPTION.findall(span)}
        real = option_names(context) - ({"-h", "--help"} if path != "jobqueue" else set())
        if passes_options_through(context):
            own = option_names(context) - {"-h", "--help"}
            assert documented == own, f"{path} passes other options through; document only its own ({own})"
            continue
        assert sorted(documented - real) == [], f"{path}: documented options it does not take"
        assert sorted(real - documented) == [], f"{path}: options missing from docs/configuration.md"


def test_every_documented_option_default_is_the_real_default():
    # Given options documented with a default: `--option` (default `value`)
    commands = cli_commands()
    checked = 0
    for path, (_, options_cell) in cli_rows().items():
        by_name = {name: param for param in commands[path].command.params if isinstance(param, click.Option)
                   for name in param.opts}
        for spelled, value in re.findall(r"`([^`]+)` (?:[^;(]*)\(default `([^`]+)`", options_cell):
            param = by_name[spelled.split("/")[-1]]
            checked += 1
            # Then the value is click's default, or the variable the command reads instead
            if param.default is None:
                assert value.startswith(ENV_PREFIX), f"{path} {spelled}: no default in the code, documented {value!r}"
                assert param.help and value in param.help, f"{path} {spelled}: the code does not read {value}"
            else:
                assert str(param.default) == value, f"{path} {spelled}: documented {value!r}, real {param.default!r}"
    assert checked >= 8, "the defaults were not found: the table's form changed"


#: A ``jobqueue`` command in code: at the start of a code span or line, or after ``&&``, ``;``,
#: ``|`` or ``$(`` (so neither ``celery -A jobqueue worker`` nor ``from jobqueue import``).
INVOCATION = re.compile(r"(?:^\s*|[;&|(]\s*)jobqueue ([a-z][\w-]*)((?:[ \t]+[^\s&|;#)]+)*)")


def test_every_jobqueue_command_line_in_the_docs_uses_options_its_command_takes():
    commands = cli_commands()
    wrong = []
    for doc in REFERENCE_DOCS:
        for span in code_spans(doc.read_text()):
            for name, rest in INVOCATION.findall(span):
                words = rest.split()
                while words and f"jobqueue {name} {words[0]}" in commands:  # a group's subcommand
                    name, rest = f"{name} {words[0]}", " ".join(words[1:])
                    words = words[1:]
                context = commands.get(f"jobqueue {name}")
                if context is None:
                    wrong.append(f"{doc.name}: no command `jobqueue {name}`")
                    continue
                if passes_options_through(context):
                    continue
                for token in rest.split():
                    match = re.fullmatch(r"\[?(--?[A-Za-z][\w-]*)(=\S*)?\]?", token)
                    if match and match.group(1) not in option_names(context):
                        wrong.append(f"{doc.name}: `jobqueue {name}` has no option {match.group(1)}")
    assert wrong == []


# -- paths and names ----------------------------------------------------------------------------

#: Paths and modules the docs name as examples of what one might add.
EXAMPLES = {"jobqueue/connectors/forge.py", "jobqueue.connectors.forge"}
#: Named in docs/developers.md by the lead's plan for issue 23 before the branches that create them
#: are merged (records, the worker's concerns, the store's migrations): may be missing until then.
PLANNED = {"jobqueue/shared/records.py", "jobqueue/worker/concerns.py", "monitor/store/migrations/"}
REPOSITORY_PATH = re.compile(r"(?<![\w/.-])((?:jobqueue|monitor|tests|bench)/[\w/.{},-]*)")
DOTTED_NAME = re.compile(r"(?<![\w/.-])((?:jobqueue|monitor)(?:\.\w+)+)")


def resolves(dotted: str) -> bool:
    """True when ``dotted`` is a module, or an attribute reached from one."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def string_literals_of_the_code() -> set[str]:
    """Every string constant in jobqueue/ and monitor/ (task names such as ``jobqueue.run_job``)."""
    return {node.value for path in project_modules() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_repository_path_and_module_the_docs_name_exists():
    literals = string_literals_of_the_code()
    missing = []
    for doc in REFERENCE_DOCS:
        for span in re.findall(r"`([^`\n]+)`", doc.read_text()):
            for token in REPOSITORY_PATH.findall(span):
                for path in expand(token.rstrip(".,")):
                    if path not in EXAMPLES | PLANNED and not (ROOT / path).exists():
                        missing.append(f"{doc.name}: {path}")
            for name in DOTTED_NAME.findall(span):
                name = name.rstrip(".")
                if name not in EXAMPLES and name not in literals and not resolves(name):
                    missing.append(f"{doc.name}: {name}")
    assert missing == []


def test_every_jobqueue_variable_the_docs_name_is_a_setting_or_a_test_variable():
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(variables_the_tests_read())
    named = {(doc.name, variable) for doc in REFERENCE_DOCS
             for variable in re.findall(r"\bJOBQUEUE_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text())}
    assert sorted((doc, variable) for doc, variable in named if variable not in known) == []


# -- the Python API ------------------------------------------------------------------------------

#: Parameters of the public functions that are for the project's own use (tests, the monitor's
#: retry), which a signature in the docs may leave out.
INTERNAL_PARAMETERS = {"app", "job_id", "extra"}


def documented_signatures() -> list[tuple[str, str, list[str]]]:
    """``(doc, function, parameter names)`` of every signature the docs spell out in full, such as
    ``submit_batch(service, payload, count, *, vary=None, ...)``."""
    import jobqueue

    found = []
    for doc in REFERENCE_DOCS:
        for name, params in re.findall(r"`(\w+)\(([^`()]*\*,[^`()]*)\)`", doc.read_text()):
            assert name in jobqueue.__all__, f"{doc.name}: {name} is not in jobqueue's public API"
            names = [p.split("=")[0].strip() for p in params.split(",")]
            found.append((doc.name, name, [n for n in names if n and n != "*"]))
    return found


def test_every_public_signature_in_the_docs_is_the_real_one():
    import inspect

    import jobqueue

    signatures = documented_signatures()
    assert len(signatures) >= 3, "the signatures were not found: their form changed"
    for doc, name, documented in signatures:
        real = list(inspect.signature(getattr(jobqueue, name)).parameters)
        # Then the docs name real parameters, in their order, and leave out only internal ones
        assert documented == [p for p in real if p in documented], f"{doc}: {name}({', '.join(documented)})"
        assert set(real) - set(documented) <= INTERNAL_PARAMETERS, f"{doc}: {name} lacks {set(real) - set(documented)}"


# -- the monitor's routes -----------------------------------------------------------------------

#: A method and a path in the docs (``GET /api/jobs/<id>``).
DOC_ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) (/[\w./<>-]*)")


def normalise(path: str) -> str:
    """A path with every placeholder spelled ``<>``: ``/api/jobs/<job_id>`` = ``/api/jobs/<id>``."""
    return re.sub(r"<[^>]*>", "<>", path).rstrip(".")


def documented_routes(path: Path) -> set[tuple[str, str]]:
    text = re.sub(r"<[^>]*>", "<>", path.read_text())
    return {(method, normalise(route)) for method, route in DOC_ROUTE.findall(text)}


@pytest.fixture(scope="module")
def monitor_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The monitor's Flask app, built as tests/monitor/conftest.py builds it (no broker work)."""
    from monitor.app import create_app

    folder = tmp_path_factory.mktemp("routes")
    settings = Settings(monitor_db=f"sqlite:///{folder / 'app.db'}",
                        broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", monitor_token="docs-token").resolved()
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["jobqueue_monitor"].close()


def served_routes(app: Any) -> set[tuple[str, str]]:
    return {(method, normalise(rule.rule)) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_route_the_monitor_serves_is_in_the_api_doc_and_every_documented_one_is_served(monitor_app):
    # Given the monitor's URL map and the routes docs/api.md names
    served, documented = served_routes(monitor_app), documented_routes(DOCS / "api.md")
    # Then they are the same
    assert sorted(served - documented) == [], "served, but not in docs/api.md"
    assert sorted(documented - served) == [], "in docs/api.md, but not served"


def test_every_monitor_route_another_doc_names_is_served(monitor_app):
    # Given the monitor's routes other docs name (theirs: /api/..., the pages, /healthz, /metrics)
    served = served_routes(monitor_app)
    prefixes = ("/api/", "/healthz", "/metrics", "/ws")
    named = {(doc.name, method, route) for doc in REFERENCE_DOCS if doc.name != "api.md"
             for method, route in documented_routes(doc) if route.startswith(prefixes)}
    # Then the monitor serves each
    assert sorted(entry for entry in named if entry[1:] not in served) == []


def test_every_api_route_is_an_operation_of_the_openapi_document_and_back(monitor_app):
    from monitor.web.openapi import document

    # Given the API's routes (not the pages, their files or the websocket) and the OpenAPI document
    api = {(method, route) for method, route in served_routes(monitor_app)
           if route.startswith(("/api/", "/healthz", "/metrics"))}
    described = {(method.upper(), normalise(re.sub(r"\{[^}]*\}", "<>", path)))
                 for path, item in document(monitor_app)["paths"].items() for method in item
                 if path.startswith(("/api/", "/healthz", "/metrics"))}
    # Then the document describes exactly those operations
    assert sorted(api - described) == [], "served, but not in the OpenAPI document (an undeclared route?)"
    assert sorted(described - api) == [], "in the OpenAPI document, but not served"


def documented_submit_fields() -> set[str]:
    line = next(line for line in (DOCS / "api.md").read_text().splitlines() if line.startswith("- `POST /api/jobs` `"))
    body = line.split("` `", 1)[1].split("`", 1)[0]
    return set(re.findall(r'"(\w+)"', body))


def test_the_fields_post_api_jobs_takes_are_documented_and_in_the_openapi_document(monitor_app):
    from monitor.web.api import SUBMIT_FIELDS
    from monitor.web.openapi import document

    # Given the fields the submit endpoint takes
    # Then docs/api.md and the OpenAPI document list exactly those
    assert sorted(documented_submit_fields()) == sorted(SUBMIT_FIELDS)
    schema = document(monitor_app)["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert sorted(schema["properties"]) == sorted(SUBMIT_FIELDS)


def test_the_submit_endpoint_takes_each_documented_field_and_refuses_others(monitor_app):
    # Given a submit to a service nobody provides (refused before anything is enqueued)
    client = monitor_app.test_client()
    headers = {"Authorization": "Bearer docs-token"}
    values = {"payload": {}, "priority": 5, "queue": "gpu0", "timeout": 10, "count": 1, "workflow_id": "w1",
              "step": 1, "webhook_url": "http://127.0.0.1:9/hook", "requires": {"tags": ["docs"]}, "tenant": "acme"}
    assert sorted(values) == sorted(documented_submit_fields() - {"service"})
    for field, value in values.items():
        # When it carries one documented field
        answer = client.post("/api/jobs", json={"service": "no-such-service", field: value}, headers=headers)
        # Then the field is taken: the refusal is about the service
        assert answer.status_code == 400, field
        assert answer.get_json()["error"]["code"] == "invalid_job", (field, answer.get_json())
    # And a field the docs do not list is refused by name
    answer = client.post("/api/jobs", json={"service": "no-such-service", "colour": "red"}, headers=headers)
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "bad_request"
    assert "colour" in answer.get_json()["error"]["message"]


# -- the package map ----------------------------------------------------------------------------

#: Imports that break docs/developers.md's "may import" column today, each to go while issue 23
#: is under way: (importing module, imported package). A new one fails the test below, and so
#: does an entry that no longer occurs (remove it then).
IMPORT_EXCEPTIONS: set[tuple[str, str]] = set()


def expand(token: str) -> list[str]:
    """``jobqueue/{errors,states}.py`` -> ``["jobqueue/errors.py", "jobqueue/states.py"]``."""
    match = re.fullmatch(r"([^{]*)\{([^}]*)\}(.*)", token)
    if match is None:
        return [token]
    head, names, tail = match.groups()
    return [f"{head}{name}{tail}" for name in names.split(",")]


def package_map() -> dict[str, set[str] | None]:
    """docs/developers.md's "Where things go" table: ``{unit: units it may import}`` (None: any),
    a unit being a top-level module (``jobqueue/config.py``) or a package (``jobqueue/worker/``)."""
    rules: dict[str, set[str] | None] = {}
    for cells in table_rows(sections(DOCS / "developers.md")["Where things go"]):
        units = expand(first_literal(cells[0]) or "")
        allowed = None if cells[2] == "anything" else {
            unit for token in re.findall(r"`([^`]+)`", cells[2]) for unit in expand(token)}
        for unit in units:
            assert unit not in rules, f"{unit} has two rows"
            rules[unit] = allowed
    return rules


def unit_of(module: str) -> str:
    """The unit a dotted module name belongs to: ``jobqueue.worker.task`` -> ``jobqueue/worker/``."""
    parts = module.split(".")
    if len(parts) == 1:
        return f"{parts[0]}/__init__.py"
    if (ROOT / parts[0] / parts[1]).is_dir():
        return f"{parts[0]}/{parts[1]}/"
    return f"{parts[0]}/{parts[1]}.py"


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in it (lazy imports too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
    return {name for name in found if name.split(".")[0] in ("jobqueue", "monitor")}


def project_modules() -> list[Path]:
    return sorted(p for root in ("jobqueue", "monitor") for p in (ROOT / root).rglob("*.py"))


def test_every_module_belongs_to_a_package_of_the_map():
    rules = package_map()
    units = {unit_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in project_modules()}
    assert sorted(units - set(rules)) == [], "modules outside the map of docs/developers.md"
    assert sorted(set(rules) - units) == [], "the map names what does not exist"


def imports_breaking_the_map() -> set[tuple[str, str]]:
    """(module, package) of every import the map's "may import" column does not allow."""
    rules = package_map()
    breaking = set()
    for path in project_modules():
        own = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        allowed = rules[own]
        if allowed is None:
            continue
        for module in imported_modules(path):
            target = unit_of(module)
            if target != own and target not in allowed:
                breaking.add((str(path.relative_to(ROOT)), target))
    return breaking


def test_every_import_follows_the_package_map():
    # Given every import of the project's modules
    # Then each is one the map of docs/developers.md allows, or a known exception on its way out
    assert sorted(imports_breaking_the_map() - IMPORT_EXCEPTIONS) == []


def test_every_known_exception_to_the_package_map_still_occurs():
    # An exception that was removed from the code is removed from the list, so it cannot return
    assert sorted(IMPORT_EXCEPTIONS - imports_breaking_the_map()) == []
